"""The seed's decision table as a pure function: which containers a requestor gets.

Encryption (the whole delivery path, in path order, each party once):
  * the requestor's own gateway, when the requestor is a user of a served domain D
    (Fig. 2: mail leaves through D's gateway, which must be able to scan it);
  * the target domain's gateway, when the target's domain is served (Fig. 1);
  * the target's genuine certificate, when the directory holds one.
  A user of D writing to a colleague in D gets D's gateway once plus the genuine
  certificate if known: internal mail is delivered by the same gateway/mail hub, and
  a user expects "Encrypt" to work for colleagues too.
  A gateway account asking for an encryption container (Fig. 2 re-encryption) gets the
  target's gateway (when served and not itself) and the genuine certificate.
Signing (Fig. 3): only the gateway of D, only for senders of D, only when D has a
signing key. Everyone else is refused with a reason.
A gateway account may stand for several domains (one gateway serving example.com and
example.de): each of them is "D" above, i.e. its own domain for signing and for never
getting itself; a user account has exactly one domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from keypost.core.address import Address
from keypost.core.types import ContainerFormat, Purpose, Requestor, RequestorKind, Role


@dataclass(frozen=True)
class DirectoryView:
    """What the directory serves: domains with gateway keys and genuine certificates."""

    served_domains: frozenset[str]
    genuine_addresses: frozenset[str]  # Address.key() of addresses with a genuine certificate
    signing_domains: frozenset[str] = frozenset()  # served domains that registered a signing key
    # Genuine certificates of mailboxes in served domains go to anonymous requestors too
    # (the seed: anyone may encrypt end to end). Off, an outsider cannot tell a mailbox
    # with a certificate from any other address of the domain; accounts still get them.
    genuine_to_anonymous: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    role: Role
    domain: str | None  # the gateway's domain for proxy roles; None for genuine
    purpose: Purpose
    format: ContainerFormat = ContainerFormat.X509


@dataclass(frozen=True)
class Decision:
    specs: tuple[ContainerSpec, ...]
    refused: str | None = None  # a reason when the request is refused (never "unknown user")
    note: str = ""  # why the list is what it is, in words (e.g. "no gateway serves example.org")


def decide(
    requestor: Requestor,
    address: Address,
    purpose: Purpose,
    view: DirectoryView,
    fmt: ContainerFormat = ContainerFormat.X509,
) -> Decision:
    specs: list[ContainerSpec] = []

    def add(role: Role, domain: str | None) -> None:
        spec = ContainerSpec(role, domain, purpose, fmt)
        if spec not in specs:
            specs.append(spec)

    target = address.domain
    if purpose is Purpose.SIGN:
        if requestor.kind is not RequestorKind.GATEWAY:
            return Decision(
                (), refused="signing containers are issued only to the sender's gateway"
            )
        if target not in requestor.domains:
            return Decision(
                (), refused=f"the gateway of {requestor.named_domains} cannot sign for {target}"
            )
        if target not in view.signing_domains:
            return Decision((), refused=f"no signing key is registered for {target}")
        add(Role.PROXY_SIGNING, target)
        return Decision(tuple(specs), note=f"signing container of {target}'s gateway")

    if requestor.kind is RequestorKind.USER:
        for own in sorted(requestor.domains & view.served_domains):  # one: a user's domain
            add(Role.PROXY_ENCRYPTION, own)
    own_gateway = requestor.kind is RequestorKind.GATEWAY and target in requestor.domains
    if target in view.served_domains and not own_gateway:
        add(Role.PROXY_ENCRYPTION, target)
    if address.key() in view.genuine_addresses and (
        view.genuine_to_anonymous
        or requestor.kind is not RequestorKind.ANONYMOUS
        or target not in view.served_domains
    ):
        add(Role.GENUINE, None)
    if not specs:
        if own_gateway and target in view.served_domains:
            # Not "nobody serves it": the asking gateway is the one, and never gets itself.
            return Decision((), note=f"{target} is the asking gateway's own domain")
        return Decision((), note=f"no gateway serves {target} and no certificate is known")
    return Decision(tuple(specs))
