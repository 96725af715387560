"""The vocabulary of "was container serial S issued for address A?", which the directory
answers (GET /v1/bindings) and the gateway asks (policy.recipient_binding)."""

from __future__ import annotations

import enum

# RFC 5280 4.1.2.2: a serial is a positive integer of at most 20 octets (40 hex digits).
MAX_SERIAL_HEX = 40


class Binding(enum.Enum):
    BOUND = "bound"  # the directory issued the container with this serial for this address
    NOT_BOUND = "not_bound"  # it issued that container, for another address
    UNKNOWN = "unknown"  # it cannot say: never issued, forgotten, or not the asker's


def serial_hex(serial: int) -> str:
    """A serial as the API writes it: upper-case hex without leading zeros (openssl's
    `x509 -serial` spelling without its padding)."""
    return f"{serial:X}"


def parse_serial_hex(text: str) -> int | None:
    """A serial written in hex (either case, no sign, no prefix), or None."""
    if not 0 < len(text) <= MAX_SERIAL_HEX or not all(c in "0123456789abcdefABCDEF"
                                                     for c in text):
        return None
    value = int(text, 16)
    return value if value > 0 else None
