"""Hands a message to the next hop (smtplib in a worker thread) and maps its answers."""

from __future__ import annotations

import logging
import re
import smtplib
from collections.abc import Sequence
from dataclasses import dataclass

from keypost.gateway.config import HostPort
from keypost.gateway.errors import NextHopUnavailable, PermFailure

log = logging.getLogger("keypost.gateway.relay")

_PASS_OPTIONS = ("SMTPUTF8", "BODY=")
_ENHANCED = re.compile(r"5\.\d{1,3}\.\d{1,3}(?=\s|$)")  # RFC 3463, permanent class


@dataclass(frozen=True)
class Refused:
    """Recipients the next hop refused while accepting others: (recipient, reply) pairs."""

    recipients: tuple[tuple[str, str], ...] = ()


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())


class Relay:
    """One SMTP transaction per call. Raises NextHopUnavailable (-> 451) when the next hop is
    down, slow or answers 4xx, PermFailure with the next hop's 5xx when it refuses the
    message; returns the recipients it refused when it accepted the others."""

    def __init__(self, next_hop: HostPort, timeout: float, hostname: str) -> None:
        self.next_hop, self.timeout, self.hostname = next_hop, timeout, hostname

    def send(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        message: bytes,
        mail_options: Sequence[str] = (),
    ) -> Refused:
        host, port = self.next_hop.host, self.next_hop.port
        opts = [o for o in mail_options if o.upper().startswith(_PASS_OPTIONS)]
        # The options describe what arrived; a decrypted message may be 8-bit where the
        # ciphertext was 7-bit, and 8-bit content must be announced (RFC 6152)
        eight_bit = not message.isascii()
        if eight_bit:
            opts = [o for o in opts if not o.upper().startswith("BODY=")] + ["BODY=8BITMIME"]
        # A notice or report to a UTF-8 address needs SMTPUTF8 although nobody asked for it
        utf8 = not (mail_from.isascii() and all(r.isascii() for r in rcpts))
        if utf8 and "SMTPUTF8" not in (o.upper() for o in opts):
            opts.append("SMTPUTF8")
        try:
            with smtplib.SMTP(
                host, port, local_hostname=self.hostname, timeout=self.timeout
            ) as smtp:
                smtp.ehlo()
                if not smtp.has_extn("smtputf8"):
                    if utf8:  # smtplib would fail to encode it: a 451 on every retry
                        err = PermFailure("the next hop offers no SMTPUTF8 for a UTF-8 address",
                                          "5.6.7")
                        err.code = 553
                        raise err
                    opts = [o for o in opts if o.upper() != "SMTPUTF8"]
                if not smtp.has_extn("8bitmime"):
                    if eight_bit:  # RFC 6152: never 8-bit bytes to it; a retry fares no better
                        raise PermFailure("the next hop offers no 8BITMIME for 8-bit content",
                                          "5.6.3")
                    opts = [o for o in opts if not o.upper().startswith("BODY=")]
                # Each address once: smtplib counts its refusals per address, and took a
                # recipient named twice and refused for one refusal of two (on to DATA
                # with no recipient: the next hop's 503 instead of its refusal)
                refused = smtp.sendmail(mail_from, list(dict.fromkeys(rcpts)), message, opts)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(code >= 500 for code in codes):
                code, text = next(iter(exc.recipients.values()))
                raise _perm(code, text) from None
            raise NextHopUnavailable("next hop refused the recipients for now") from None
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise _perm(exc.smtp_code, exc.smtp_error) from None
            raise NextHopUnavailable(f"next hop answered {exc.smtp_code}") from None
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("next hop %s:%d unavailable: %s", host, port, type(exc).__name__)
            raise NextHopUnavailable("next hop unavailable") from None
        return Refused(tuple((r, f"{c} {_text(t)}") for r, (c, t) in refused.items()))


def _perm(code: int, text: bytes | str) -> PermFailure:
    """The next hop's 5xx as our reply: its code and its enhanced status code (RFC 3463,
    e.g. 5.3.4 message too big: the sender's MTA and the bounce say why); 5.0.0 when it
    gave none."""
    line = _text(text)
    found = _ENHANCED.match(line)
    enhanced = found.group() if found else "5.0.0"
    rest = line[found.end():].strip() if found else line
    err = PermFailure(f"next hop refused: {rest[:200]}", enhanced)
    err.code = code
    return err
