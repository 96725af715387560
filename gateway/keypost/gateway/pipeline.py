"""The gateway's decisions as a pure-ish pipeline: (envelope, bytes) -> per-recipient outcomes.

No sockets here: the directory and the scanner come in as Protocol objects, and the
SMTP glue (handler.py) carries out the outcomes. Tests drive this directly.

Direction comes from the envelope: a sender in a served domain writing to a recipient
outside = outbound; everything else is inbound. Inbound mail for a served domain is
decrypted with that domain's keys only; inbound mail for a domain we do not serve
passes unchanged (the gateway never hands clear text to a stranger).
"""

from __future__ import annotations

import email.utils
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keypost.core import smime
from keypost.core.address import Address, parse_address
from keypost.core.errors import (
    AddressError,
    DecryptError,
    SmimeError,
    UnsupportedCipherError,
)
from keypost.core.x509_checks import ski_extension
from keypost.gateway import headers, mimecheck
from keypost.gateway.binding import BindingSource, bind_recipients
from keypost.gateway.config import InboundGenuine, MalformedPolicy, NoGenuinePolicy, PolicyConfig
from keypost.gateway.directory import DirectoryClient
from keypost.gateway.errors import PermFailure, TempFailure
from keypost.gateway.keys import DomainKeys
from keypost.gateway.layers import OUTER_SIGNATURE_HEADER, Peeled, peel, verdict
from keypost.gateway.quarantine import Onward
from keypost.gateway.scan import Scanner, Verdict

log = logging.getLogger("keypost.gateway.pipeline")

DECRYPTED_HEADER = "X-Keypost-Decrypted"
# policy.inbound_genuine = "keep": what the gateway opened, on the message it delivered as
# it arrived (still encrypted, to the recipient's own certificate among others)
KEPT_HEADER = "X-Keypost-Kept-Encrypted"


class Action(enum.Enum):
    RELAY = "relay"  # send `message` to `recipients` through the next hop
    REJECT = "reject"  # refuse permanently with `reply` (5xx)
    QUARANTINE = "quarantine"  # keep `message` in the quarantine, notify `notify`


@dataclass(frozen=True)
class Outcome:
    recipients: tuple[str, ...]
    action: Action
    message: bytes = b""
    reply: str = ""  # the SMTP reply for REJECT; the reason for QUARANTINE
    notify: tuple[str, ...] = ()  # who gets a quarantine notice
    note: str = ""  # what was done, for the log (never content or secrets)
    # QUARANTINE of outbound mail: the steps a release must still apply (None: not outbound)
    onward: Onward | None = None


@dataclass(frozen=True)
class _Opened:
    clear: bytes
    key_index: int  # of the configured encryption keys
    algorithm: str
    rids: tuple[smime.RecipientId, ...]
    opened_by: tuple[smime.OpenedBy, ...]  # the RecipientInfos of the key that opened it
    skis: tuple[bytes, ...]  # the RecipientInfos naming a certificate by subjectKeyIdentifier
    # derived_keys: the recipients (positions in the list given to _open) whose own key
    # yields the content key, and whether a configured key itself does (plain)
    derived_for: frozenset[int] = frozenset()
    plain: bool = True


# What _open says of mail from our directory that none of the keys tried opens
NO_KEY = "encrypted to a key this gateway does not hold"


def _address(text: str) -> Address | None:
    try:
        return parse_address(text)
    except AddressError:
        return None


def _public_der(key: smime.PrivateKey | x509.Certificate) -> bytes:
    pub = key.public_key()
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_public_key(cert: x509.Certificate, key: smime.PrivateKey) -> bool:
    """Does the container carry the public half of `key`?"""
    return _public_der(cert) == _public_der(key)


class Pipeline:
    """Decides what happens to one message. Raises TempFailure (-> 451) when a
    dependency (directory, scanner) cannot answer; everything the sender caused ends in
    a REJECT or QUARANTINE outcome instead of an exception."""

    def __init__(
        self,
        domains: Mapping[str, DomainKeys],
        policy: PolicyConfig,
        scanner: Scanner,
        directory: DirectoryClient,
        directory_issuers: Sequence[x509.Name] = (),
        scan_plain: bool = False,
        max_message_size: int = 25 * 1024 * 1024,
        signature_anchors: Sequence[x509.Certificate] = (),
        bindings: BindingSource | None = None,
    ) -> None:
        self.domains = dict(domains)
        self.policy = policy
        self.scanner = scanner
        self.directory = directory
        self.issuers = list(directory_issuers)
        self.scan_plain = scan_plain
        self.max_size = max_message_size
        # what outer signature layers taken off to decrypt are verified against
        self.signature_anchors = list(signature_anchors)
        # policy.recipient_binding = "enforce" (None: off); built by serve from the config
        self.bindings = bindings

    # --- entry point -------------------------------------------------------------

    def process(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> list[Outcome]:
        rcpts = tuple(rcpt_tos)
        if len(data) > self.max_size:
            return [Outcome(rcpts, Action.REJECT, reply="554 5.3.4 message too big")]
        sender = _address(mail_from) if mail_from else None
        sender_keys = self.domains.get(sender.domain) if sender else None
        inbound: dict[str, list[str]] = {}
        outbound: list[str] = []
        foreign: list[str] = []
        for r in rcpts:
            a = _address(r)
            if a is not None and a.domain in self.domains:
                inbound.setdefault(a.domain, []).append(r)
            elif sender_keys is not None:
                outbound.append(r)
            else:
                foreign.append(r)
        out: list[Outcome] = []
        if foreign:
            out.append(Outcome(tuple(foreign), Action.RELAY, data, note="not for us"))
        for domain, group in inbound.items():
            out += self._inbound(self.domains[domain], tuple(group), mail_from, data)
        if outbound and sender is not None and sender_keys is not None:
            out += self._outbound(sender, sender_keys, tuple(outbound), mail_from, data)
        return merge(out)

    # --- inbound (Fig. 1) ---------------------------------------------------------

    def _inbound(
        self, keys: DomainKeys, rcpts: tuple[str, ...], mail_from: str, data: bytes,
    ) -> list[Outcome]:
        data = _without_claims(data)  # only this gateway may say what it decrypted
        peeled = self._peel(keys, data, rcpts)
        if peeled == NO_KEY and keys.derived:
            # no recipient's key opens it: each is refused as one it was not meant for
            return self._not_derived_for(rcpts, rcpts)
        if isinstance(peeled, str):
            return [self._malformed(rcpts, peeled, data, rcpts)]
        if peeled.foreign and not peeled.layers:
            # signature layers and all: they are the recipient's to check
            return [Outcome(rcpts, Action.RELAY, data, note="encrypted for others; unchanged")]
        if not peeled.layers:
            return self._scanned(rcpts, mail_from, data, rcpts, self.scan_plain, "plain")
        # Before the scan: what goes to nobody is not scanned (nor held) for anybody. Every
        # envelope opened must admit a recipient (the stricter wins): were the outermost
        # enough, wrapping a colleague's ciphertext in an envelope to one's own container
        # would launder it past recipient_binding and derived_keys.
        refused: list[Outcome] = []
        admitted = list(range(len(rcpts)))
        for opened in peeled.envelopes:
            if admitted:
                admitted, refusals = self._admitted(keys, opened, rcpts, admitted)
                refused += refusals
        if not admitted:
            return refused
        rcpts = tuple(rcpts[n] for n in admitted)
        # The encrypted entities' own fields join the header block: a claim may hide there.
        clear = self._recorded(keys, peeled, _without_claims(peeled.content))
        note = f"decrypted {len(peeled.envelopes)} envelope(s)"
        if len(peeled.layers) > len(peeled.envelopes):
            note += f"; {len(peeled.layers) - len(peeled.envelopes)} signature layer(s) removed"
        scanned = self._scanned(rcpts, mail_from, clear, rcpts, True, note)
        if scanned[0].action is not Action.RELAY:
            return refused + scanned
        if self.policy.inbound_genuine is InboundGenuine.KEEP:
            return refused + self._kept(keys, peeled, data, scanned[0])
        if self.policy.inbound_genuine is InboundGenuine.REENCRYPT:
            return refused + self._reencrypted(scanned[0])
        return refused + scanned

    def _reencrypted(self, delivered: Outcome) -> list[Outcome]:
        """policy.inbound_genuine = "reencrypt", after the scan accepted the decrypted
        message in `delivered`: each recipient with a genuine certificate gets that message
        (the bytes the scanner judged) encrypted anew to their genuine certificate(s) alone,
        in an envelope of their own (one per recipient: a shared envelope's RecipientInfos
        would tell each who else has a certificate, and a Bcc recipient's would show), the
        others `delivered`. Raises TempFailure (directory), before anything is encrypted."""
        found = [(r, self._genuine(r)) for r in delivered.recipients]
        out: list[Outcome] = []
        rest: list[str] = []
        for rcpt, genuine in found:
            sealed = _encrypted(delivered.message, genuine) if genuine else None
            if isinstance(sealed, bytes):
                out.append(Outcome((rcpt,), Action.RELAY, sealed, note=(
                    f"{delivered.note}; re-encrypted to {len(genuine)} genuine certificate(s)")))
                continue
            if sealed is not None:
                # as a certificate that fails verification: counts as none (README)
                log.warning("genuine certificate(s) of %s unusable (%s); delivered decrypted",
                            rcpt, sealed)
            rest.append(rcpt)
        return out + ([replace(delivered, recipients=tuple(rest))] if rest else [])

    def _genuine(self, rcpt: str) -> tuple[x509.Certificate, ...]:
        """`rcpt`'s genuine certificates: what the directory gave us, verified against
        genuine_roots (those that fail are logged and left out by the client). Raises
        TempFailure (directory)."""
        addr = _address(rcpt)
        return self.directory.encryption_certificates(addr).genuine if addr else ()

    def _kept(self, keys: DomainKeys, peeled: Peeled[_Opened], original: bytes,
              delivered: Outcome) -> list[Outcome]:
        """policy.inbound_genuine = "keep", after the scan accepted the clear text in
        `delivered`: the recipients whose own key opens every envelope we opened get
        `original` as it arrived, its envelope naming their genuine certificates alone
        (a header per envelope saying what we opened it with), the others `delivered`.
        Raises TempFailure (directory)."""
        envelopes = peeled.envelopes
        if not all(self._names_others(e) for e in envelopes):
            return [delivered]  # each RecipientInfo of some envelope is one of our containers
        genuine = {r: self._genuine(r) for r in delivered.recipients}
        keep = [r for r in delivered.recipients if self._opens_for(genuine[r], envelopes)]
        if not keep:
            return [delivered]
        claims = [f"{self._opened_with(keys, opened)}; scanned" for opened in reversed(envelopes)]
        out: list[Outcome] = []
        for rcpt in keep:  # each their own copy: one recipient's certificate is theirs to see
            kept = _only_for(original, genuine[rcpt])
            for claim in claims:
                kept = headers.prepend(kept, KEPT_HEADER, claim)
            out.append(Outcome((rcpt,), Action.RELAY, kept,
                               note=f"{delivered.note}; kept encrypted to the genuine certificate"))
        rest = tuple(r for r in delivered.recipients if r not in keep)
        return out + ([replace(delivered, recipients=rest)] if rest else [])

    def _names_others(self, opened: _Opened) -> bool:
        """Does the envelope name any certificate not issued by our directory CA? Asked
        before the directory: mail only to our containers costs no directory question."""
        return bool(opened.skis) or any(r.issuer not in self.issuers for r in opened.rids)

    @staticmethod
    def _opens_for(genuine: Sequence[x509.Certificate], envelopes: Sequence[_Opened]) -> bool:
        """Does every envelope name one of a recipient's `genuine` certificates (what the
        directory gave us, verified against genuine_roots), by issuer and serial or by
        subjectKeyIdentifier? Every one: an inner envelope for our key alone would leave
        the recipient ciphertext their key cannot open."""
        names = {(c.issuer, c.serial_number) for c in genuine}
        skis = {ski for c in genuine if (ski := ski_extension(c)) is not None}
        return bool(genuine) and all(
            any((r.issuer, r.serial) in names for r in e.rids) or not skis.isdisjoint(e.skis)
            for e in envelopes)

    def _admitted(
        self, keys: DomainKeys, opened: _Opened, rcpts: tuple[str, ...],
        candidates: list[int],
    ) -> tuple[list[int], list[Outcome]]:
        """Of `candidates` (positions in `rcpts`), those this opened envelope admits, and
        the others' refusals. Raises TempFailure (directory)."""
        own = [n for n in candidates if n in opened.derived_for]
        rest = [n for n in candidates if n not in opened.derived_for]
        refused: list[Outcome] = []
        if keys.derived and rest and not opened.plain:
            refused += self._not_derived_for([rcpts[n] for n in rest], rcpts)
            rest = []
        if self.bindings is not None and rest:
            # Under derived_keys only mail a plain key opened (accept_plain_keys) is asked.
            bound = bind_recipients(self.bindings, self.issuers, opened.opened_by,
                                    [rcpts[n] for n in rest])
            refused += [Outcome((r,), Action.REJECT, reply=why) for r, why in bound.refused]
            if bound.refused:
                log.warning("decrypted mail refused for %d of %d recipient(s): "
                            "policy.recipient_binding", len(bound.refused), len(rcpts))
            rest = [n for n in rest if rcpts[n] in bound.recipients]
        return sorted(own + rest), refused

    def _recorded(self, keys: DomainKeys, peeled: Peeled[_Opened], clear: bytes) -> bytes:
        """`clear` with a header per layer taken off, outermost first: what each envelope
        was opened with (X-Keypost-Decrypted), and what each signature layer said. The
        signatures cannot stay (they signed ciphertext that decryption replaces): the
        recipient learns from us what they said."""
        for layer in reversed(peeled.layers):
            if layer.opened is not None:
                clear = headers.prepend(clear, DECRYPTED_HEADER,
                                        self._opened_with(keys, layer.opened))
            elif layer.signed is not None:
                clear = headers.prepend(clear, OUTER_SIGNATURE_HEADER,
                                        verdict(layer.signed, self.signature_anchors))
        return clear

    @staticmethod
    def _opened_with(keys: DomainKeys, opened: _Opened) -> str:
        """What a header says one envelope was opened with (no secrets)."""
        value = f"{keys.describe_key(opened.key_index)}, alg={opened.algorithm}"
        return value + (", derived-keys" if opened.derived_for else "")

    # --- outbound (Figs. 2 and 3) -------------------------------------------------

    def _outbound(
        self, sender: Address, keys: DomainKeys, rcpts: tuple[str, ...], mail_from: str,
        data: bytes,
    ) -> list[Outcome]:
        data, sign = self._sign_request(data)
        notify = (mail_from,)
        peeled = self._peel(keys, data, rcpts)
        if isinstance(peeled, str):
            # held as the sender sent it (never decrypted): it may leave as it is
            return [self._malformed(rcpts, peeled, data, notify, Onward())]
        if peeled.foreign and not peeled.layers:
            # End-to-end encrypted past us: nothing to scan, nothing to change. Not signed
            # either: a multipart/signed around it would hide the enveloped data from the
            # receiving gateway, which looks for a top-level application/pkcs7-mime.
            return [Outcome(rcpts, Action.RELAY, data, note="encrypted for others; unchanged")]
        if not peeled.layers:
            scanned = self._scanned(rcpts, mail_from, data, notify, self.scan_plain, "plain",
                                    Onward(sign=sign))
            if sign:
                return [self._signed(o, sender, keys) for o in scanned]
            return scanned
        # The sender's signatures around an envelope do not survive re-encryption (they
        # signed the ciphertext); the whole-path original, forwarded, keeps them.
        envelopes = peeled.envelopes
        note = f"decrypted {len(envelopes)} envelope(s)"
        if len(peeled.layers) > len(envelopes):
            note += "; outer signature removed"
        scanned = self._scanned(rcpts, mail_from, peeled.content, notify, True, note,
                                Onward(encrypt=True, sign=sign))
        if scanned[0].action is not Action.RELAY:
            return scanned
        # Whom the original was encrypted for: a recipient reads it only if every envelope
        # we opened names them (an inner one for our gateway alone would stop them).
        theirs = set.intersection(*({(rid.issuer, rid.serial) for rid in e.rids}
                                    for e in envelopes))
        return self._sealed(sender, keys, rcpts, data, peeled.content, theirs, sign)

    def _sealed(
        self, sender: Address, keys: DomainKeys, rcpts: tuple[str, ...], original: bytes,
        clear: bytes, theirs: set[tuple[x509.Name, int]], sign: bool,
    ) -> list[Outcome]:
        """Fig. 2 after the scan: sign `clear` if asked, then forward `original`, re-encrypt,
        send clear or refuse, per recipient (`theirs`: whom `original` was encrypted for)."""
        body = clear
        if sign:  # once for all recipients; the signature goes inside any new envelope
            try:
                body = self._sign(sender, keys, body)
            except PermFailure as exc:
                return [Outcome(rcpts, Action.REJECT, reply=exc.reply)]
        return [self._onward(r, original, body, theirs, sign) for r in rcpts]

    # --- release from the quarantine ---------------------------------------------

    def release(
        self, mail_from: str, rcpts: Sequence[str], message: bytes, onward: Onward | None,
    ) -> list[Outcome]:
        """What releasing a held message does (the administrator overrides the scan).
        Recipients in the served domains, and all recipients of mail from outside, get it
        as held; with inbound_genuine = "reencrypt", a message the gateway decrypted goes
        to those with a genuine certificate encrypted to it, as had the scan accepted it.
        Recipients outside of mail from a served domain get the outbound steps the hold
        interrupted (sign, re-encrypt per outbound_no_genuine): the held bytes may be
        decrypted clear text. Raises TempFailure when the directory cannot answer."""
        sender = _address(mail_from) if mail_from else None
        keys = self.domains.get(sender.domain) if sender else None
        outside = tuple(r for r in rcpts if keys is not None and not self._served(r))
        ours = tuple(r for r in rcpts if r not in outside)
        out = [Outcome(ours, Action.RELAY, message, note="released")] if ours else []
        # Only this gateway writes X-Keypost-Decrypted (one arriving from outside is removed
        # before anything is held), so it marks held clear text that arrived encrypted.
        if (out and self.policy.inbound_genuine is InboundGenuine.REENCRYPT
                and headers.get(message, DECRYPTED_HEADER) is not None):
            out = self._reencrypted(out[0])
        if outside and sender is not None and keys is not None:
            out += self._released_outbound(sender, keys, outside, message, onward)
        return out

    def _released_outbound(
        self, sender: Address, keys: DomainKeys, rcpts: tuple[str, ...], message: bytes,
        onward: Onward | None,
    ) -> list[Outcome]:
        if onward is None:
            return [Outcome(rcpts, Action.REJECT, reply=(
                "554 5.7.0 the quarantine did not record whether this outbound message was "
                "decrypted or asked to be signed (held by an older gateway version), so it "
                "cannot get the outbound treatment: not sent to recipients outside the "
                "served domains"))]
        if onward.encrypt:
            return self._sealed(sender, keys, rcpts, message, message, set(), onward.sign)
        released = Outcome(rcpts, Action.RELAY, message, note="released")
        return [self._signed(released, sender, keys) if onward.sign else released]

    def _served(self, rcpt: str) -> bool:
        a = _address(rcpt)
        return a is not None and a.domain in self.domains

    def _onward(
        self, rcpt: str, original: bytes, body: bytes, rids: set[tuple[x509.Name, int]],
        signed: bool,
    ) -> Outcome:
        """One outbound recipient of a message we decrypted: forward the original, encrypt
        `body` (the clear or signed message) for the recipient, send it clear, or refuse."""
        addr = _address(rcpt)
        found = self.directory.encryption_certificates(addr) if addr else None
        one = (rcpt,)
        readable = found is not None and rids & {
            (c.issuer, c.serial_number) for c in found.encryption
        }
        if readable and not signed:
            # Fig. 2 whole-path message: the next gateway or the recipient can read the
            # original; forward it ("the gateways need not re-encrypt"), naming only this
            # recipient's path: not the other recipients' (a Bcc one's among them). A
            # signature must go inside, so a signing request means sign and re-encrypt.
            forwarded = _only_for(original, found.encryption if found else ())
            return Outcome(one, Action.RELAY, forwarded, note="scanned; original ciphertext")
        policy = self.policy.outbound_no_genuine
        targets: tuple[x509.Certificate, ...] = ()
        if found is not None and (found.genuine or policy is not NoGenuinePolicy.REFUSE):
            targets = found.encryption
        if not targets and policy is not NoGenuinePolicy.CLEAR:
            why = "no genuine certificate" if policy is NoGenuinePolicy.REFUSE else "no certificate"
            return Outcome(
                one, Action.REJECT,
                reply=f"554 5.7.1 {why} for {rcpt}; policy refuses to send it unencrypted",
            )
        if not targets:
            return Outcome(one, Action.RELAY, body, note="decrypted; sent clear by policy")
        sealed = _encrypted(body, targets)
        if isinstance(sealed, str):
            return Outcome(one, Action.REJECT,
                           reply=f"554 5.7.1 cannot encrypt for {rcpt}: {sealed}")
        return Outcome(one, Action.RELAY, sealed,
                       note=f"re-encrypted for {len(targets)} certificate(s)")

    def _sign_request(self, data: bytes) -> tuple[bytes, bool]:
        """Strip the user's signing request (subject tag, header); say whether there was one."""
        asked = self.policy.sign_all_outbound
        if self.policy.sign_header:
            value = headers.get(data, self.policy.sign_header)
            if value is not None:
                asked = asked or value.strip().lower() in ("yes", "true", "1")
                data = headers.remove(data, self.policy.sign_header)
        data, tagged = headers.strip_subject_tag(data, self.policy.sign_subject_tag)
        return data, asked or tagged

    def _signed(self, o: Outcome, sender: Address, keys: DomainKeys) -> Outcome:
        if o.action is not Action.RELAY:
            return o
        try:
            return Outcome(o.recipients, o.action, self._sign(sender, keys, o.message),
                           note=f"{o.note}; signed")
        except PermFailure as exc:
            return Outcome(o.recipients, Action.REJECT, reply=exc.reply)

    def _sign(self, sender: Address, keys: DomainKeys, message: bytes) -> bytes:
        problem = from_problem(message, sender)
        if problem is not None:
            # The signature names the envelope sender; a client shows a signer that is not
            # the From address as a forgery warning, or a forged From as signed by us.
            log.warning("not signed for <%s>: %s", sender, problem)
            raise PermFailure(f"not signed: {problem}; the gateway signs only mail whose From "
                              "is the envelope sender", "5.7.1")
        if keys.signing_key is None:
            raise PermFailure(f"signing asked for, but {keys.name} has no signing key", "5.7.0")
        containers = self.directory.signing_containers(sender)
        if not containers:
            raise TempFailure(f"the directory has no signing container for {sender}", "4.7.0")
        if not same_public_key(containers[0], keys.signing_key):
            log.error("signing container for %s does not carry %s's signing key",
                      sender, keys.name)
            raise TempFailure("signing container does not match the signing key", "4.7.0")
        # Previous containers (kept across a change) sign mail dated before the current
        # one's notBefore; those of a key we no longer hold are no use.
        ours = [c for c in containers if same_public_key(c, keys.signing_key)]
        try:
            container = smime.pick_signing_container(message, ours)
            return smime.sign_message(message, keys.signing_key, container)
        except SmimeError as exc:
            raise PermFailure(f"message cannot be signed: {exc}", "5.6.0") from None

    # --- shared steps -------------------------------------------------------------

    def _peel(self, keys: DomainKeys, data: bytes,
              rcpts: Sequence[str]) -> Peeled[_Opened] | str:
        """The layers around the content that our keys open (keypost.gateway.layers), or
        the reason the message is malformed (NO_KEY: an envelope none of the keys opens)."""
        return peel(data, lambda envelope: self._open(keys, envelope, rcpts))

    def _open(self, keys: DomainKeys, data: bytes,
              rcpts: Sequence[str]) -> _Opened | str | None:
        """Decrypt with the domain's keys (with derived_keys: each of `rcpts`' own): the
        clear message, None when the message is not for us (no RecipientInfo issued by our
        directory), or a reason it is malformed (NO_KEY: none of the keys opens it)."""
        try:
            ids, skis = smime.recipient_identifiers(data)
        except (SmimeError, ValueError):
            return "not a readable S/MIME message"
        rids = tuple(ids)
        opener = keys.opener([_address(r) for r in rcpts] if keys.derived else ())
        try:
            res = opener.decryptor.decrypt_message(data)
        except DecryptError:
            return NO_KEY if self._ours(rids) else None
        except UnsupportedCipherError as exc:  # e.g. 3DES: say so, if it was meant for us
            return str(exc) if self._ours(rids) else None
        except (SmimeError, ValueError):
            return "not a readable S/MIME message"
        problem = mimecheck.problem(res.message)
        if problem is not None:
            return f"decrypted content is not a readable message: {problem}"
        owners = [opener.owners[i] for i in res.opened_keys]
        return _Opened(res.message, opener.owners[res.key_index][0], res.algorithm, rids,
                       res.opened_by, tuple(skis),
                       frozenset(n for _, ns in owners if ns is not None for n in ns),
                       not keys.derived or any(ns is None for _, ns in owners))

    @staticmethod
    def _not_derived_for(refuse: Sequence[str], rcpts: Sequence[str]) -> list[Outcome]:
        """derived_keys: the recipients whose own key does not open the message."""
        log.warning("encrypted mail refused for %d of %d recipient(s): not encrypted to "
                    "their derived key (derived_keys)", len(refuse), len(rcpts))
        return [Outcome((r,), Action.REJECT, reply=(
            f"554 5.7.1 {r}: not delivered, the message was not encrypted to this mailbox's "
            "key (derived_keys)")) for r in refuse]

    def _ours(self, rids: Sequence[smime.RecipientId]) -> bool:
        """Were all RecipientInfos issued by our directory (asked only when decryption
        failed: comparing issuer names is no work for the messages that open)?"""
        return bool(rids) and bool(self.issuers) and all(r.issuer in self.issuers for r in rids)

    def _malformed(
        self, rcpts: tuple[str, ...], reason: str, data: bytes, notify: tuple[str, ...],
        onward: Onward | None = None,
    ) -> Outcome:
        if self.policy.malformed is MalformedPolicy.QUARANTINE:
            return Outcome(rcpts, Action.QUARANTINE, data, reason, notify, note="malformed",
                           onward=onward)
        return Outcome(rcpts, Action.REJECT, reply=f"554 5.6.0 {reason}")

    def _scanned(
        self, rcpts: tuple[str, ...], mail_from: str, message: bytes,
        notify: tuple[str, ...], scan: bool, note: str, onward: Onward | None = None,
    ) -> list[Outcome]:
        if not scan:
            return [Outcome(rcpts, Action.RELAY, message, note=note)]
        result = self.scanner.scan(message, mail_from, rcpts)
        if result.verdict is Verdict.ACCEPT:
            return [Outcome(rcpts, Action.RELAY, message, note=f"{note}; scanned")]
        reason = result.reason or result.verdict.value
        if result.verdict is Verdict.REJECT:
            return [Outcome(rcpts, Action.REJECT, reply=f"554 5.7.1 {reason}")]
        return [Outcome(rcpts, Action.QUARANTINE, message, reason, notify, note="scan",
                        onward=onward)]


def _without_claims(message: bytes) -> bytes:
    """The message without the fields only this gateway may write (what it decrypted, what
    the signatures it took off said): from outside they are forged."""
    for name in (DECRYPTED_HEADER, OUTER_SIGNATURE_HEADER, KEPT_HEADER):
        if headers.get(message, name) is not None:
            message = headers.remove(message, name)
    return message


def _only_for(original: bytes, certificates: Sequence[x509.Certificate]) -> bytes:
    """The original ciphertext naming only `certificates` among its recipients (the
    envelope's other RecipientInfos taken out, keypost.core.smime.trim_recipients); as it
    came when a signature around it covers the envelope's bytes."""
    try:
        return smime.trim_recipients(original, certificates)
    except SmimeError as exc:  # it opened, so this is not expected: still no reason to lose it
        log.warning("original ciphertext relayed with all its recipients: %s", exc)
        return original


def _encrypted(message: bytes, targets: Sequence[x509.Certificate]) -> bytes | str:
    """`message` encrypted to `targets` as the gateway encrypts any message (keypost.core:
    the fields other than Content-* stay outside, Bcc is dropped, the content cipher is
    the best all targets announce), or why the engine cannot encrypt to them."""
    try:
        return smime.encrypt_message(message, targets)
    except SmimeError as exc:
        return str(exc)


def from_problem(message: bytes, sender: Address) -> str | None:
    """Why the message's From header is not the envelope sender alone, or None. One From
    field with one address, equal to `sender` under keypost.core's normalisation (A-label
    domain, case-folded local part: Address.key)."""
    written = headers.values(message, "From")
    found = [addr for _, addr in email.utils.getaddresses(written) if addr]
    if len(written) != 1 or len(found) != 1:
        return f"the From header names {len(found)} addresses in {len(written)} field(s), not one"
    addr = _address(found[0])
    if addr is None or addr.key() != sender.key():
        return f"the From address {found[0]} is not the envelope sender {sender}"
    return None


def merge(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """Join outcomes that do the same thing, so each distinct message is relayed once."""
    merged: dict[tuple[Action, bytes, str, Onward | None], Outcome] = {}
    for o in outcomes:
        key = (o.action, o.message, o.reply, o.onward)
        prev = merged.get(key)
        if prev is None:
            merged[key] = o
        else:
            merged[key] = Outcome(
                prev.recipients + o.recipients, o.action, o.message, o.reply,
                tuple(dict.fromkeys(prev.notify + o.notify)), prev.note, o.onward,
            )
    return list(merged.values())


ProcessFn = Callable[[str, Sequence[str], bytes], list[Outcome]]
