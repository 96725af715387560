"""The host's text/plain part is what Thunderbird itself sends for the same compose content.

tests/data/thunderbird_plaintext.json was recorded from Thunderbird 153 and 140 ESR by
tests/e2e/record_plaintext.py: the compose details the add-on reads (getComposeDetails) and
the text/plain part Thunderbird's own Send wrote. Here the host gets those details as the
add-on passes them (extension/modules/controller.js encryptParams) and its message's
text/plain part must carry the same body bytes after transfer decoding, and format=flowed.
"""

from __future__ import annotations

import email
import email.message
import json
from pathlib import Path
from typing import Any

import pytest

from keypost.host.compose import build_message, parse_compose
from keypost.host.flowed import _char_width, flow_plain

DATA = json.loads(
    (Path(__file__).parents[1] / "data" / "thunderbird_plaintext.json").read_text("utf-8"))
VECTORS: list[dict[str, Any]] = DATA["vectors"]

# Where Thunderbird's result depends on what the compose API does not tell the add-on.
# Each entry says why; the test checks the host still differs, so a fix shows up here.
KNOWN: dict[tuple[str, str], str] = {
    # A typed line starting with '>' is space-stuffed and wrapped by Thunderbird; a quoted
    # one (a reply's) is kept. plainTextBody is the same text for both: the host takes such
    # lines for quotes, as the "quoted" recordings of these bodies show it right.
    ("line starts", "typed"): "typed '>' line",
    ("quote marks", "typed"): "typed '>' lines",
    ("quote trailing", "typed"): "typed '>' lines",
    # plainTextBody turns U+00A0 into a space (convertToPlainText without
    # OutputPersistNBSP) in a message written as plain text; Thunderbird sends U+00A0 and
    # does not break lines there.
    ("non-breaking", "typed"): "no-break spaces lost by the compose API",
    ("non-breaking", "quoted"): "no-break spaces lost by the compose API",
    # A list item's lines carry no soft breaks: where the item's paragraph ends is not in
    # the text, so the host drops the address without wrapping the item anew.
    ("link same list", "html"): "list item not rewrapped",
}


def _params(details: dict[str, Any]) -> dict[str, Any]:
    """encryptParams' bodies (controller.js), with the recorded delivery format."""
    plain_only = details["isPlainText"] is True
    return {
        "from": "Alice <alice@example.com>",
        "to": ["bob@example.org"],
        "subject": "plain text",
        "body_plain": details["plainTextBody"],
        "body_html": None if plain_only else details["body"],
        "delivery_format": None if plain_only else "both",
    }


def _plain_part(data: bytes) -> email.message.Message:
    message = email.message_from_bytes(data)
    parts = [p for p in message.walk() if p.get_content_type() == "text/plain"]
    assert len(parts) == 1
    return parts[0]


def _body(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    # The number of line ends at the very end is not in plainTextBody (the compose API
    # trims them), nor content: compared without them.
    return payload.decode("utf-8").rstrip("\r\n")


@pytest.mark.parametrize(
    "vector", VECTORS, ids=[f"{v['name']}-{v['how']}-{'+'.join(v['versions'])}" for v in VECTORS])
def test_plain_part_is_thunderbirds(vector: dict[str, Any]) -> None:
    part = _plain_part(build_message(parse_compose(_params(vector["details"]))))
    sent = vector["sent"]
    assert sent["content_type"] == "text/plain; charset=UTF-8; format=flowed"
    assert part.get_param("format") == "flowed"
    assert part.get_param("delsp") is None  # Thunderbird writes none: delsp=no
    expected = sent["text"].rstrip("\r\n")
    got = _body(part)
    if (vector["name"], vector["how"]) in KNOWN:
        assert got != expected, "now equal: take it off KNOWN"
    else:
        assert got == expected


def test_recordings_cover_both_versions_and_every_body() -> None:
    """The data holds what both Thunderbirds sent (a re-recording with one missing fails)."""
    assert set(DATA["thunderbird"]) == {"153", "140"}
    seen = {(v["name"], v["how"]): set() for v in VECTORS}  # type: dict[tuple[str, str], set[str]]
    for v in VECTORS:
        seen[(v["name"], v["how"])].update(v["versions"])
    assert all(versions == {"153", "140"} for versions in seen.values()), seen


def test_widths_are_geckos() -> None:
    """As Thunderbird counts them (the "emoji" and "widths" recordings): East Asian wide
    characters and wide emoji two columns, combining marks none, other characters one."""
    text = "a日、\u0301🙂\u2764\U0001d400\u00a0\uff71"
    assert [_char_width(c) for c in text] == [1, 2, 2, 0, 2, 1, 1, 1, 1]


def test_flow_plain_basics() -> None:
    words = " ".join(["word"] * 20)
    assert flow_plain(words) == " ".join(["word"] * 14) + " \n" + " ".join(["word"] * 6)
    assert flow_plain("-- \nsig  ") == "-- \nsig"
    assert flow_plain("From me\n>quote  \n leading") == " From me\n>quote  \n  leading"
