"""Recipient strings as RFC 5322 address lists: one string per mailbox, as written.

Thunderbird hands the add-on one string per recipient, but a string may hold a list (pasted
addresses, a group `Team: a@x.org, b@y.org;`). The add-on's `splitAddressList`
(extension/modules/recipients.js) splits the same way, so the popup's list of recipients is
the list the host encrypts for; tests/data/address_lists.json holds the cases both check.
"""

from __future__ import annotations

import re

# A line break or NUL in a recipient string is a header injection attempt, never a list.
_BREAKS = re.compile("[\r\n\0]")


def split_address_list(text: str) -> list[str]:
    """The mailboxes of one recipient string, each trimmed, in order.

    Commas outside quotes and angle brackets separate mailboxes, so a quoted display name
    with a comma stays one. A group gives its members (its name is dropped) and an empty
    group nothing; a `;` outside a group separates like a comma (lists pasted from Outlook).
    A `:` after an address is no group: the piece stays whole and is refused as an address.
    A string holding CR, LF or NUL (once trimmed) is not split: it comes back whole, so it is
    refused as one invalid address rather than read as several valid ones.
    """
    text = text.strip()
    if _BREAKS.search(text):
        return [text]
    pieces: list[str] = []
    current: list[str] = []
    quoted = in_group = has_address = False
    angle = 0
    chars = iter(text)
    for ch in chars:
        if quoted:
            if ch == "\\":
                ch += next(chars, "")
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle, has_address = angle + 1, True
        elif ch == ">":
            angle = max(0, angle - 1)
        elif angle == 0 and ch == "@":
            has_address = True
        elif angle == 0 and ch in ",;":
            pieces.append("".join(current))
            current, has_address = [], False
            in_group = in_group and ch == ","
            continue
        elif (angle == 0 and ch == ":" and not in_group and not has_address
              and "".join(current).strip()):
            current, in_group = [], True  # the group's name: not a recipient
            continue
        current.append(ch)
    pieces.append("".join(current))
    return [p.strip() for p in pieces if p.strip()]
