"""Values that cross module and component boundaries: roles, purposes, capabilities, requestors."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property


class Role(enum.Enum):
    """What a key container stands for (stated in the keypost extension)."""

    PROXY_ENCRYPTION = "proxy-encryption"  # a gateway's encryption key bound to an address
    PROXY_SIGNING = "proxy-signing"  # a gateway's signing key bound to a sender address
    GENUINE = "genuine"  # the recipient's own certificate, handed out as is


class Purpose(enum.Enum):
    ENCRYPT = "encrypt"
    SIGN = "sign"


class ContainerFormat(enum.Enum):
    X509 = "x509"
    OPENPGP = "openpgp"  # reserved for a later issue


class Capability(enum.Enum):
    """Content-encryption algorithms a gateway accepts, in its order of preference."""

    AES256_CBC = "aes256-cbc"
    AES128_CBC = "aes128-cbc"


DEFAULT_CAPABILITIES: tuple[Capability, ...] = (Capability.AES256_CBC, Capability.AES128_CBC)


class RequestorKind(enum.Enum):
    ANONYMOUS = "anonymous"  # an outsider: no credentials
    USER = "user"  # a user account of its one domain
    GATEWAY = "gateway"  # the gateway account of its domains (one gateway may serve several)


@dataclass(frozen=True)
class Requestor:
    kind: RequestorKind
    # lower-case A-labels: a user's one domain, the domains a gateway account stands for;
    # empty only for ANONYMOUS
    domains: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # a str is iterable too: Requestor(kind, "a.example") would test substrings
        if not isinstance(self.domains, frozenset):
            raise TypeError("Requestor.domains is a frozenset of domains")

    @staticmethod
    def anonymous() -> Requestor:
        return Requestor(RequestorKind.ANONYMOUS)

    @staticmethod
    def user(domain: str) -> Requestor:
        return Requestor(RequestorKind.USER, frozenset((domain,)))

    @staticmethod
    def gateway(*domains: str) -> Requestor:
        return Requestor(RequestorKind.GATEWAY, frozenset(domains))

    @cached_property  # once per requestor: the directory keeps them (its LDAP hot path)
    def named_domains(self) -> str:
        """The domains as one text, sorted and comma-joined ("" for anonymous): for logs,
        the audit and cache keys."""
        return ",".join(sorted(self.domains))
