"""policy.recipient_binding = "enforce": inbound mail the gateway decrypted goes only to the
envelope recipients that the containers it was encrypted to were issued for.

A RecipientInfo names a container by issuer and serial, and every container of a domain
carries the same gateway key: the key opens the message whichever mailbox it is sent to.
The directory knows each serial's address (GET /v1/bindings); the gateway asks it about
the RecipientInfos whose wrapped key was the content key (DecryptResult.opened_by), i.e.
the containers of its own key the sender encrypted to, and keeps each answer per serial.

What it cannot stop: the serial in a RecipientInfo is not protected by anything. Someone
who edits it into the serial of a container issued for their own address (any requestor
can have one) gets the message decrypted for themselves. It stops re-sending a ciphertext
as it is (a forward, a redirect, an alias), not a forger (README: Recipient binding).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from keypost.core.address import Address, parse_address
from keypost.core.bindings import Binding, serial_hex
from keypost.core.errors import AddressError
from keypost.core.smime import OpenedBy
from keypost.gateway.config import DirectoryConfig
from keypost.gateway.directory import HttpDirectory
from keypost.gateway.errors import DirectoryUnavailable

# Answers kept (a serial's address never changes); past this many serials the cache
# starts over, so a flood of made-up serials cannot grow it.
MAX_CACHED_SERIALS = 10_000
REPLY = "554 5.7.1"
# Serials and addresses per request: the directory refuses more than its max_addresses
# (100 by default) of either with 400, which would defer such mail for good.
CHUNK = 20


class BindingSource(Protocol):
    """Asks the directory; raises DirectoryUnavailable (-> 451)."""

    def bindings(self, serials: Sequence[int],
                 addresses: Sequence[Address]) -> list[list[Binding]]:
        """One row per serial, one Binding per address, in the order given."""
        ...


class HttpBindings(HttpDirectory):
    """GET /v1/bindings as the gateway account, CHUNK serials and addresses at a time."""

    def bindings(self, serials: Sequence[int],
                 addresses: Sequence[Address]) -> list[list[Binding]]:
        rows: list[list[Binding]] = [[] for _ in serials]
        for s in range(0, len(serials), CHUNK):
            for a in range(0, len(addresses), CHUNK):
                part = self._ask(serials[s:s + CHUNK], addresses[a:a + CHUNK])
                for i, row in enumerate(part):
                    rows[s + i] += row
        return rows

    def _ask(self, serials: Sequence[int],
             addresses: Sequence[Address]) -> list[list[Binding]]:
        asked = [(serial_hex(s), str(a)) for s in serials for a in addresses]
        resp = self.get("/v1/bindings", [("serial", serial_hex(s)) for s in serials]
                        + [("address", str(a)) for a in addresses])
        try:
            results = resp.json()["results"]
            got = [(str(r["serial"]), str(r["address"]), Binding(r["binding"]))
                   for r in results]
        except (ValueError, KeyError, TypeError):
            raise DirectoryUnavailable("directory sent an unreadable answer") from None
        if [(s, a) for s, a, _ in got] != asked:
            raise DirectoryUnavailable("directory answered other questions than asked")
        width = len(addresses)
        return [[b for _, _, b in got[i * width:(i + 1) * width]] for i in range(len(serials))]


class CachingBindings:
    """A BindingSource that asks only what it has not been told: BOUND and NOT_BOUND are
    final (a container's address never changes) and kept per serial; UNKNOWN is asked again
    (the directory may learn the container a moment later, from another process)."""

    def __init__(self, source: BindingSource) -> None:
        self.source = source
        self.lock = threading.Lock()
        self.cache: dict[int, dict[str, Binding]] = {}

    def bindings(self, serials: Sequence[int],
                 addresses: Sequence[Address]) -> list[list[Binding]]:
        with self.lock:
            known = {s: dict(self.cache.get(s, {})) for s in serials}
        missing_serials = [s for s in serials if any(a.key() not in known[s] for a in addresses)]
        if missing_serials:
            missing = [a for a in addresses
                       if any(a.key() not in known[s] for s in missing_serials)]
            rows = self.source.bindings(missing_serials, missing)
            with self.lock:
                if len(self.cache) > MAX_CACHED_SERIALS:
                    self.cache.clear()
                for serial, row in zip(missing_serials, rows, strict=True):
                    for address, binding in zip(missing, row, strict=True):
                        known[serial][address.key()] = binding
                        if binding is not Binding.UNKNOWN:
                            self.cache.setdefault(serial, {})[address.key()] = binding
        return [[known[s][a.key()] for a in addresses] for s in serials]


@dataclass(frozen=True)
class Bound:
    """The envelope recipients the message may go to, and each other one's refusal."""

    recipients: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]  # (recipient, SMTP reply)


def bind_recipients(source: BindingSource, issuers: Sequence[x509.Name],
                    opened_by: Sequence[OpenedBy], rcpts: Sequence[str]) -> Bound:
    """Split the envelope recipients of a message decrypted for their domain into those
    one of its containers (`opened_by` of our directory CA `issuers`) was issued for and
    the others. A RecipientInfo by SubjectKeyIdentifier names no container (all of a key's
    containers share the SKI) and binds nobody. Raises DirectoryUnavailable."""
    serials = sorted({o.serial for o in opened_by
                      if o.serial is not None and o.issuer is not None and o.issuer in issuers})
    if not serials:
        if any(o.ski is not None for o in opened_by):
            why = ("it was encrypted to the gateway key by subjectKeyIdentifier, which all "
                   "containers of the key share")
        else:
            why = "it names no container of our directory (issuer and serial)"
        return Bound((), tuple(
            (r, f"{REPLY} {r}: not delivered, {why}, so the mailbox it was meant for "
                "cannot be checked (policy.recipient_binding)") for r in rcpts))
    parsed: list[tuple[str, Address]] = []
    refused: list[tuple[str, str]] = []
    for r in rcpts:
        try:
            parsed.append((r, parse_address(r)))
        except AddressError:  # never for a served domain's recipient: grouped by its domain
            refused.append((r, f"{REPLY} {r}: not delivered, not a mailbox address"))
    rows = source.bindings(serials, [a for _, a in parsed]) if parsed else []
    allowed: list[str] = []
    for i, (r, _) in enumerate(parsed):
        found = {row[i] for row in rows}
        if Binding.BOUND in found:
            allowed.append(r)
        elif found == {Binding.UNKNOWN}:
            refused.append((r, f"{REPLY} {r}: not delivered, the directory does not know "
                               "the container(s) this message was encrypted to (never issued, "
                               "or forgotten after its audit retention)"))
        else:
            refused.append((r, f"{REPLY} {r}: not delivered, the message was encrypted for "
                               "another mailbox (policy.recipient_binding)"))
    return Bound(tuple(allowed), tuple(refused))


def make_bindings(cfg: DirectoryConfig, password: str | None, timeout: float) -> CachingBindings:
    """The directory's /v1/bindings behind a cache (config.py checked the URL and account;
    `password` is the one load_directory_files read for the container fetcher too)."""
    return CachingBindings(HttpBindings(cfg, password, timeout))
