"""Values that cross module and component boundaries: roles, purposes, capabilities, requestors."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    USER = "user"  # a user account of `domain`
    GATEWAY = "gateway"  # the gateway account of `domain`


@dataclass(frozen=True)
class Requestor:
    kind: RequestorKind
    domain: str | None = None  # lower-case A-label; None only for ANONYMOUS

    @staticmethod
    def anonymous() -> Requestor:
        return Requestor(RequestorKind.ANONYMOUS)
