"""A real Postfix instance in a temporary directory on loopback ports, for the gateway tests.

Layout: smtpd on `port` hands every message to the content filter (the gateway,
`content_filter = keypost:[127.0.0.1]:<gateway port>`, a dedicated smtp client as the
README recommends, or `lmtp`); the gateway re-injects on
`reinject_port`, an smtpd with an empty content_filter; Postfix then relays to the
final sink (relayhost). Own config, queue and data directories; always stopped.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"

MASTER_CF = """\
127.0.0.1:{port}     inet  n       -       n       -       -       smtpd
127.0.0.1:{reinject} inet  n       -       n       -       -       smtpd
  -o content_filter=
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
{reinject_options}{entries}keypost   unix  -       -       n       -       10      smtp
  -o smtp_tls_security_level=none
  -o smtp_dns_support_level=disabled
  -o max_use=20
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.test.invalid
mydomain = test.invalid
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink}
content_filter = {transport}:[127.0.0.1]:{gateway}
bounce_size_limit = 1
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
smtp_connect_timeout = 5s
"""


def available() -> bool:
    return Path(POSTFIX).exists() and shutil.which("postconf") is not None


class Postfix:
    def __init__(self, root: Path, port: int, reinject_port: int, gateway_port: int,
                 sink_port: int, transport: str = "keypost",
                 reinject_options: Sequence[str] = (), main_extra: str = "",
                 entries: Mapping[int, tuple[str, int]] | None = None) -> None:
        """`reinject_options`: extra `name=value` settings of the re-injection smtpd (the
        gateway's next hop), e.g. a smaller message_size_limit; `main_extra`: lines
        appended to main.cf; `entries` ({smtpd port: (transport, gateway port)}): more
        smtpd listeners, each with a content filter (gateway) of its own, so that one
        Postfix serves gateways of different settings."""
        self.root = root
        self.port, self.reinject_port = port, reinject_port
        self.ports = [port, *(entries or {})]  # where mail enters, one per content filter
        self.etc = root / "etc"
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "main.cf").write_text(
            MAIN_CF.format(root=root, sink=sink_port, gateway=gateway_port, transport=transport)
            + main_extra
        )
        extra = "".join(f"  -o {opt}\n" for opt in reinject_options)
        more = "".join(f"127.0.0.1:{entry} inet n - n - - smtpd\n"
                       f"  -o content_filter={via}:[127.0.0.1]:{gateway}\n"
                       for entry, (via, gateway) in (entries or {}).items())
        (self.etc / "master.cf").write_text(
            MASTER_CF.format(port=port, reinject=reinject_port, reinject_options=extra,
                             entries=more)
        )

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {done.stderr}{self.log()}")
        return done

    def start(self) -> None:
        (self.root / "queue").mkdir(exist_ok=True)  # root-owned; Postfix makes its subdirs
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        shutil.chown(data, "postfix", "postfix")  # master.lock and caches live here
        self._run(POSTFIX, "-c", str(self.etc), "start")

    def stop(self) -> None:
        self._run(POSTFIX, "-c", str(self.etc), "stop", check=False)

    def flush(self) -> None:
        self._run(POSTQUEUE, "-c", str(self.etc), "-f")

    def queue(self) -> str:
        return self._run(POSTQUEUE, "-c", str(self.etc), "-p").stdout

    def log(self) -> str:
        p = self.root / "maillog"
        return p.read_text(errors="replace") if p.exists() else ""
