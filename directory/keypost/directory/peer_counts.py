"""Open connections per peer address, so that one address cannot hold them all.

One counter serves the LDAP server and the HTTP(S) sites (each with its own instance):
an address at its cap is refused its next connection, and forgotten when its last closes.
"""

from __future__ import annotations


class PeerCounts:
    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self.total = 0  # connections counted, of every address

    def admit(self, host: str, cap: int) -> bool:
        """Count one more connection of `host`, unless it already holds `cap`."""
        held = self._open.get(host, 0)
        if held >= cap:
            return False
        self._open[host] = held + 1
        self.total += 1
        return True

    def release(self, host: str) -> None:
        """One connection `admit` counted has closed."""
        self.total -= 1
        left = self._open[host] - 1
        if left:
            self._open[host] = left
        else:
            del self._open[host]

    def snapshot(self) -> dict[str, int]:
        return dict(self._open)
