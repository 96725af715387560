"""Releases a held message: each recipient gets its copy through the next hop, or the
message stays held for that recipient (nothing lost, nothing sent twice)."""

from __future__ import annotations

from keypost.gateway.errors import ReleaseRefused, SmtpFailure
from keypost.gateway.pipeline import Action, Pipeline
from keypost.gateway.quarantine import Held, Maildir, mark_released
from keypost.gateway.relay import Relay


def release_held(pipeline: Pipeline, relay: Relay, quarantine: Maildir, found: Held) -> None:
    """Send `found` on with the outbound steps its hold interrupted and file it as released.
    Recipients the next hop refuses or defers stay held in a new entry (the others have
    their copy: releasing the old entry again would send it twice). Raises ReleaseRefused
    (one line, naming what is still held) unless every recipient got its copy; TempFailure
    when the directory cannot answer (then nothing was sent)."""
    qid = found.qid
    if not found.rcpts:
        raise ReleaseRefused(f"{qid} not released (still held): it names no recipient")
    outcomes = pipeline.release(found.mail_from, found.rcpts, found.message, found.onward)
    refused = [o for o in outcomes if o.action is not Action.RELAY]
    if refused:
        raise ReleaseRefused(f"{qid} not released (still held): {refused[0].reply}")
    failed: list[tuple[str, str]] = []
    for o in outcomes:
        try:
            failed += relay.send(found.mail_from, o.recipients, o.message).recipients
        except SmtpFailure as exc:
            failed += [(r, exc.reply) for r in o.recipients]
    if not failed:
        mark_released(quarantine.root, qid)
        return
    why = f"{failed[0][0]}: {failed[0][1]}"
    if len(failed) == len(found.rcpts):
        raise ReleaseRefused(f"{qid} not released (still held): {why}")
    rest = [r for r in found.rcpts if r in dict(failed)]
    # written (fsync) before the old entry leaves new/: a crash in between duplicates, never loses
    kept = quarantine.store(found.message, found.mail_from, rest, found.reason, found.onward)
    mark_released(quarantine.root, qid)
    delivered = [r for r in found.rcpts if r not in rest]
    raise ReleaseRefused(f"{qid} released to {', '.join(delivered)} only; still held as {kept} "
                         f"for {', '.join(rest)}: {why}")
