"""The aiosmtpd handler: runs the pipeline off the event loop and carries out its outcomes.

Lose nothing: the reply to DATA is 250 only after every outcome has been carried out
(relayed to the next hop, or written to the quarantine); any failure before that is 451,
so the sending MTA keeps the message and retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from keypost.gateway import headers, notices
from keypost.gateway.errors import SmtpFailure
from keypost.gateway.pipeline import Action, Outcome, ProcessFn
from keypost.gateway.quarantine import Maildir, Onward
from keypost.gateway.relay import Refused, Relay

log = logging.getLogger("keypost.gateway")


class GatewayHandler:
    """aiosmtpd handler object (not a server subclass)."""

    def __init__(
        self,
        process: ProcessFn,
        relay: Relay,
        quarantine: Maildir,
        hostname: str,
        processing_timeout: float = 120.0,
        lmtp: bool = False,
        max_recipients: int = 1000,
    ) -> None:
        self.lmtp = lmtp  # LMTP: one DATA reply per recipient (RFC 2033)
        self.max_recipients = max_recipients
        self.process = process
        self.relay = relay
        self.quarantine = quarantine
        self.hostname = hostname
        self.timeout = processing_timeout
        self.inflight = 0

    async def drain(self, timeout: float) -> None:
        """Wait (up to `timeout` s) until no message is being handled: stopping in the middle
        of a relay would leave the sender without a reply, so it would send a duplicate."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.inflight and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        """aiosmtpd takes any number of recipients; beyond `max_recipients` the sender is
        told to send them in another transaction (RFC 5321 4.5.3.1.10)."""
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return (f"452 4.5.3 too many recipients: at most {self.max_recipients} per "
                    "message, send the others in another transaction")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.inflight += 1
        try:
            return await self._handle(envelope)
        finally:
            self.inflight -= 1

    async def _handle(self, envelope: Any) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):  # only when the server decodes; ours does not
            data = data.encode("utf-8", "surrogateescape")
        mail_from: str = envelope.mail_from or ""
        if mail_from == "<>":  # aiosmtpd keeps the null reverse-path as written
            mail_from = ""
        rcpts: list[str] = list(envelope.rcpt_tos)
        options: list[str] = list(envelope.mail_options or [])
        try:
            outcomes = await asyncio.wait_for(
                asyncio.to_thread(self.process, mail_from, rcpts, data), self.timeout
            )
            if self.lmtp:
                replies = await asyncio.to_thread(
                    self.settle_lmtp, mail_from, data, outcomes, options, rcpts
                )
            else:
                replies = [await asyncio.to_thread(self.settle, mail_from, data, outcomes, options)]
        except SmtpFailure as exc:
            replies = [exc.reply]
        except TimeoutError:
            replies = ["451 4.4.7 processing timed out, try again later"]
        except Exception:  # an unexpected bug must cost a retry, never the message
            log.exception("internal error while handling a message")
            replies = ["451 4.3.0 internal error, try again later"]
        if self.lmtp and len(replies) == 1:
            replies = replies * len(rcpts)
        # One line each, printable ASCII: reasons from scanners or the core must not break SMTP.
        replies = [
            "".join(c if " " <= c <= "~" else " " for c in " ".join(r.split()))[:500]
            for r in replies
        ]
        log.info("from=<%s> rcpts=%d size=%d -> %s", mail_from, len(rcpts), len(data),
                 " | ".join(dict.fromkeys(replies)))
        return "\r\n".join(replies)  # LMTP: the server sends them as consecutive replies

    def _hold(self, o: Outcome, mail_from: str, subject: str | None) -> str:
        """Quarantine one outcome durably and send its notices; returns the quarantine id."""
        qid = self.quarantine.store(o.message, mail_from, o.recipients, o.reply, o.onward)
        log.info("quarantined %s for %d recipient(s): %s", qid, len(o.recipients), o.reply)
        notify = [r for r in o.notify if r]
        if notify:
            notice = notices.quarantine_notice(
                o.recipients, mail_from, subject, o.reply, qid, self.hostname
            )
            self._notify(notify, notice, "quarantine notice")
        return qid

    def _notify(self, rcpts: Sequence[str], message: bytes, what: str) -> None:
        """Send a notice or report of the gateway's own. The message it is about is held or
        delivered by now: a failure must not cost a retry (which would hold or deliver it
        again), so the notice is kept in the quarantine instead."""
        try:
            self.relay.send("", rcpts, message)
        except SmtpFailure as exc:
            qid = self.quarantine.store(message, "", rcpts, f"{what} not sent: {exc.reply}",
                                        None)
            log.warning("%s kept as %s: %s", what, qid, exc.reply)

    def settle_lmtp(
        self, mail_from: str, original: bytes, outcomes: Sequence[Outcome],
        options: Sequence[str], rcpts: Sequence[str],
    ) -> list[str]:
        """LMTP: one reply per recipient, in RCPT order. Each group succeeds or fails on its
        own, so a next hop failing half-way costs a retry of the failed group only (no
        duplicates) and the MTA bounces refused recipients itself (no reports here)."""
        subject = headers.get(original, "Subject")
        replies: dict[str, str] = {}
        for o in outcomes:
            try:
                if o.action is Action.REJECT:
                    got = dict.fromkeys(o.recipients, o.reply)
                elif o.action is Action.QUARANTINE:
                    qid = self._hold(o, mail_from, subject)
                    got = dict.fromkeys(o.recipients, f"250 2.0.0 held in quarantine as {qid}")
                else:
                    refused = self.relay.send(mail_from, o.recipients, o.message, options)
                    got = dict.fromkeys(o.recipients, "250 2.0.0 OK")
                    got.update(refused.recipients)
            except SmtpFailure as exc:
                got = dict.fromkeys(o.recipients, exc.reply)
            replies.update(got)
        return [replies.get(r, "451 4.3.0 no outcome, try again later") for r in rcpts]

    def settle(
        self, mail_from: str, original: bytes, outcomes: Sequence[Outcome], options: Sequence[str]
    ) -> str:
        """Carry out the outcomes (blocking; runs in a worker thread) and return the reply."""
        rejects = [o for o in outcomes if o.action is Action.REJECT]
        others = [o for o in outcomes if o.action is not Action.REJECT]
        if not others:
            return rejects[0].reply if rejects else "554 5.5.1 no valid recipients"
        subject = headers.get(original, "Subject")
        delivered = held = 0
        for o in others:
            if o.action is Action.QUARANTINE:
                self._hold(o, mail_from, subject)
                held += len(o.recipients)
        failed: list[tuple[str, str]] = [(r, o.reply) for o in rejects for r in o.recipients]
        for o in others:
            if o.action is Action.RELAY:
                try:
                    refused = self.relay.send(mail_from, o.recipients, o.message, options)
                except SmtpFailure as exc:
                    if not delivered + held:
                        raise  # nothing carried out yet: one reply for the whole message
                    # Others have their copy: a 5xx would tell the sender they did not, a
                    # 451 would send theirs again. This group fares like a refused recipient.
                    refused = Refused(tuple((r, exc.reply) for r in o.recipients))
                delivered += len(o.recipients) - len(refused.recipients)
                later = [(r, why) for r, why in refused.recipients if why.startswith("4")]
                if later:
                    # A temporary refusal after others were accepted cannot be answered
                    # with 451 without duplicating their copies: keep this one instead.
                    # o.message had the outbound steps already: it may leave as it is
                    qid = self.quarantine.store(o.message, mail_from, [r for r, _ in later],
                                                f"next hop deferred: {later[0][1]}", Onward())
                    held += len(later)
                    later = [(r, f"{why} (kept as {qid})") for r, why in later]
                failed += [x for x in refused.recipients if not x[1].startswith("4")] + later
                log.debug("relayed to %d recipient(s): %s", len(o.recipients), o.note)
        if failed:
            self._report(mail_from, original, failed, subject)
        return f"250 2.0.0 OK delivered={delivered} quarantined={held} refused={len(failed)}"

    def _report(
        self, mail_from: str, original: bytes, failed: list[tuple[str, str]],
        subject: str | None,
    ) -> None:
        """Recipients refused while others were accepted: the sender learns it by a report
        (SMTP has one DATA reply for all recipients). A bounce (null sender) must not be
        bounced again, so it is kept in the quarantine instead."""
        if not mail_from:
            reason = "; ".join(f"{r}: {why}" for r, why in failed)
            qid = self.quarantine.store(original, mail_from, [r for r, _ in failed], reason,
                                        None)  # a bounce is never outbound mail
            log.warning("refused recipient(s) of a bounce kept as %s", qid)
            return
        report = notices.non_delivery_report(mail_from, failed, subject, self.hostname)
        self._notify([mail_from], report, "non-delivery report")
