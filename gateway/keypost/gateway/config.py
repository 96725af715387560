"""The gateway's TOML configuration: one dataclass per table, every default in one place.

Paths are resolved against the directory of the configuration file. Secrets (the
directory password, key passphrases) are read from files or environment variables
named here, never written into the configuration itself.
"""

from __future__ import annotations

import enum
import math
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from keypost.core.address import normalize_domain
from keypost.core.dirurl import DirectoryUrl, DirectoryUrlError, UrlProblem, parse_directory_url
from keypost.core.errors import AddressError
from keypost.core.hints import did_you_mean
from keypost.core.netaddr import is_loopback_host
from keypost.gateway.clients import LOOPBACK_CLIENTS, Network, parse_allowed_clients
from keypost.gateway.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:10025"
DEFAULT_NEXT_HOP = "127.0.0.1:10026"
DEFAULT_MAX_MESSAGE_SIZE = 25 * 1024 * 1024
DEFAULT_QUARANTINE = "quarantine"
DEFAULT_STATE = "state"
DEFAULT_LDAP_BASE = "dc=keypost"
DEFAULT_HOSTNAME = "keypost-gateway"
MAX_SECONDS = 86400.0  # timeouts and cache times: a day at most
MAX_MESSAGE_SIZE = 2.0**40
# Recipients of one transaction: RFC 5321 4.5.3.1.8 wants at least 100 taken; the default
# is Postfix's smtpd_recipient_limit. Beyond it a RCPT gets 452 4.5.3 (4.5.3.1.10).
DEFAULT_MAX_RECIPIENTS = 1000
MIN_RECIPIENTS = 100
MAX_RECIPIENTS = 1 << 20
# Sessions of allowed clients at once; more are greeted with 421. Postfix opens at most
# 20 to one content filter by default (default_destination_concurrency_limit).
DEFAULT_MAX_CONNECTIONS = 100
MAX_CONNECTIONS = 1 << 16

E = TypeVar("E", bound=enum.Enum)


class NoGenuinePolicy(enum.Enum):
    """Fig. 2: what to send when the directory knows no genuine certificate for a recipient."""

    ENCRYPT_ONLY = "encrypt-only"  # recipient's gateway container if any, else refuse
    CLEAR = "clear"  # recipient's gateway container if any, else deliver in the clear
    REFUSE = "refuse"  # a genuine certificate is required, else refuse


class MalformedPolicy(enum.Enum):
    """What to do with input the gateway must handle but cannot read."""

    REJECT = "reject"  # 554 to the sending MTA (it bounces to the sender)
    QUARANTINE = "quarantine"  # keep it in the quarantine maildir, notify the recipients


class RecipientBinding(enum.Enum):
    """Inbound mail the gateway decrypted: to whom it may go (README: Recipient binding)."""

    OFF = "off"  # every envelope recipient of the domain (a RecipientInfo names no mailbox)
    ENFORCE = "enforce"  # only those its containers were issued for (asks the directory)


class InboundGenuine(enum.Enum):
    """Inbound mail the gateway decrypted that the sender also encrypted to the recipient's
    genuine certificate: what that recipient gets (README: Direction and what happens)."""

    CLEAR = "clear"  # the decrypted message, as every other recipient
    KEEP = "keep"  # the message as it arrived, which the recipient's own key opens
    # the scanned clear message encrypted anew to the recipient's genuine certificate(s),
    # whether or not the sender had encrypted to it
    REENCRYPT = "reencrypt"


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Any of them running out answers 451 (the sending MTA retries)."""

    smtp_session: float = 300.0  # idle time of an incoming SMTP session
    processing: float = 120.0  # decrypt + scan + directory + re-encrypt for one message
    next_hop: float = 60.0  # connect and each command to the next hop
    directory: float = 10.0  # connect and each LDAP/HTTP request
    scan: float = 60.0  # the external scan command


@dataclass(frozen=True)
class DirectoryConfig:
    url: str | None = None  # ldap://, ldaps://, http:// or https://; None = no directory
    username: str | None = None  # the gateway account
    password_file: Path | None = None
    password_env: str | None = None
    trust_anchor: Path | None = None  # the directory CA (PEM)
    genuine_roots: tuple[Path, ...] = ()  # CAs accepted for recipients' genuine certificates
    base: str = DEFAULT_LDAP_BASE  # LDAP search base (the directory's suffix)
    tls_ca: Path | None = None  # CA of the directory's TLS certificate; None = system store
    # ldap:// upgraded with StartTLS before the bind; parse_config turns it on for any host
    # that is not loopback, and plain LDAP there is refused (transport_refusal)
    starttls: bool = False
    negative_cache: float = 60.0  # seconds a "no certificate" answer is remembered


@dataclass(frozen=True)
class DomainConfig:
    name: str  # lower-case A-label
    encryption_keys: tuple[Path, ...]  # first is current, the rest retired
    signing_key: Path | None = None
    key_passphrase_file: Path | None = None
    key_passphrase_env: str | None = None
    # the directory issues this domain's containers with per-address derived keys
    # (`domain add --derived-keys`): decrypt for each recipient with that recipient's key
    derived_keys: bool = False
    # with derived_keys: mail encrypted to the keys themselves (containers issued before
    # the switch) is still opened, for every recipient as before (a migration's days)
    accept_plain_keys: bool = False


@dataclass(frozen=True)
class ScanConfig:
    command: tuple[str, ...] = ()  # message on stdin; exit 0 accept, 1 reject, 2 quarantine
    entry_point: str | None = None  # name in entry point group keypost.gateway.scanners
    scan_plain: bool = False  # also scan plain mail (by default only what the gateway decrypted)


@dataclass(frozen=True)
class PolicyConfig:
    outbound_no_genuine: NoGenuinePolicy = NoGenuinePolicy.ENCRYPT_ONLY
    sign_all_outbound: bool = False
    sign_subject_tag: str = "[sign]"  # "" disables the subject tag
    sign_header: str = "X-Keypost-Sign"  # "" disables the header
    malformed: MalformedPolicy = MalformedPolicy.REJECT
    recipient_binding: RecipientBinding = RecipientBinding.OFF
    inbound_genuine: InboundGenuine = InboundGenuine.CLEAR


@dataclass(frozen=True)
class GatewayConfig:
    listen: HostPort = field(default_factory=lambda: parse_hostport(DEFAULT_LISTEN, "listen"))
    next_hop: HostPort = field(
        default_factory=lambda: parse_hostport(DEFAULT_NEXT_HOP, "next_hop")
    )
    protocol: str = "smtp"  # what `listen` speaks: "smtp" or "lmtp" (one reply per recipient)
    # peers the gateway talks to; any other gets 554 at once (serve.GatewaySMTP)
    allowed_clients: tuple[Network, ...] = LOOPBACK_CLIENTS
    hostname: str = DEFAULT_HOSTNAME
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS  # per transaction
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # sessions of allowed clients at once
    quarantine_dir: Path = Path(DEFAULT_QUARANTINE)
    # what the gateway keeps across restarts: its senders' signing containers (public)
    state_dir: Path = Path(DEFAULT_STATE)
    log_level: str = "info"
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    domains: tuple[DomainConfig, ...] = ()
    scan: ScanConfig = field(default_factory=ScanConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)

    def domain(self, name: str) -> DomainConfig | None:
        for d in self.domains:
            if d.name == name:
                return d
        return None


def parse_hostport(text: object, what: str) -> HostPort:
    if not isinstance(text, str):
        raise ConfigError(f"{what}: expected \"host:port\"")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what}: expected \"host:port\", got {text!r}")
    return HostPort(host, int(port))


def _loopback(host: str) -> bool:
    return is_loopback_host(host, localhost_name=True)


def check_addresses(listen: HostPort, next_hop: HostPort, clients_listed: bool = False) -> None:
    """The gateway speaks SMTP without TLS or authentication and signs, decrypts and
    relays for whoever connects: only the MTA on the same host may reach it, unless
    `allowed_clients` names the peers it takes (`clients_listed`). And it must not relay
    to itself (each message would come back until the timeouts ran out)."""
    if not _loopback(listen.host) and not clients_listed:
        raise ConfigError(
            f"listen: {listen.host} is not a loopback address; the gateway has no TLS or "
            "authentication, so anyone reaching it could relay through the next hop and "
            "have mail signed or decrypted: run it beside the MTA on 127.0.0.1 or [::1], "
            "or list the MTA's addresses in allowed_clients"
        )
    if next_hop.port == 0:
        raise ConfigError("next_hop: port 0 names no server")
    same_host = next_hop.host.lower() == listen.host.lower() or _loopback(next_hop.host)
    if next_hop.port == listen.port and same_host:
        raise ConfigError(f"next_hop: {next_hop} is where the gateway listens (a mail loop); "
                          "point it at the MTA's re-injection port")


def directory_url(url: str, ldap_base: str = "") -> DirectoryUrl:
    """`directory.url` read by keypost.core.dirurl (http:// to any host: transport_refusal
    says why not). Raises ConfigError; no message repeats the URL, which may hold a
    password ("ldap://gw:secret@host", or "ldap://gw:secret" where it reads as a port), and
    check-config prints the URL it accepts. `ldap_base` serves when the URL names none."""
    try:
        return parse_directory_url(url, http_anywhere=True, ldap_base=ldap_base)
    except DirectoryUrlError as exc:
        reason = exc.reason
        if exc.problem is UrlProblem.CREDENTIALS:
            reason = ("put the account in username and its password in password_file or "
                      "password_env, not in the URL (an @ in the path is written %40)")
        raise ConfigError(f"directory.url: {reason}") from None


def transport_refusal(url: str, starttls: bool) -> str | None:
    """Why this directory URL would carry the gateway's password in clear (a one-line,
    fixable reason naming the setting), or None. Only loopback may go without TLS: the
    simple bind and HTTP Basic both send the password as it is. There is no opt-out: the
    directory itself refuses a password without TLS from a peer that is not loopback.
    An unreadable URL is refused too (a DirectoryConfig built in code is checked here)."""
    try:
        target = directory_url(url)
    except ConfigError as exc:
        return str(exc)
    if target.loopback:
        return None
    if target.scheme == "http":
        return ("directory.url: http:// would send the directory password in clear to a "
                "host that is not loopback; use https://")
    if target.scheme == "ldap" and not starttls:
        return ("directory.starttls: false would send the directory password in clear to a "
                "host that is not loopback; remove the setting (StartTLS is the default "
                "there) or use ldaps://")
    return None


def _starttls_by_default(url: str | None) -> bool:
    try:
        target = directory_url(url) if url is not None else None
    except ConfigError:
        return False  # parse_config refuses the URL right after
    return target is not None and target.scheme == "ldap" and not target.loopback


class _Table:
    """Typed access to one TOML table that remembers unknown keys (typos are errors)."""

    def __init__(self, data: Mapping[str, Any], where: str, base: Path) -> None:
        self.data, self.where, self.base = data, where, base
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def _fail(self, key: str, wanted: str) -> ConfigError:
        return ConfigError(f"{self.where}{key}: expected {wanted}")

    def text(self, key: str, default: str | None = None) -> str | None:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self._fail(key, "a string")
        return v

    def flag(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._fail(key, "true or false")
        return v

    def number(self, key: str, default: float, minimum: float = 0.0,
               maximum: float = MAX_SECONDS) -> float:
        v = self._get(key)
        if v is None:
            return default
        # TOML has nan and inf; nan passes any comparison, and inf (or 1e300) overflows
        # socket timeouts and timedelta only when the gateway runs
        if (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
                or not minimum < v <= maximum):
            raise self._fail(key, f"a number > {minimum:g} and <= {maximum:.0f}")
        return float(v)

    def whole(self, key: str, default: int, minimum: int, maximum: int) -> int:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
            raise self._fail(key, f"a whole number from {minimum} to {maximum}")
        return v

    def path(self, key: str) -> Path | None:
        v = self.text(key)
        return None if v is None else (self.base / v)

    def paths(self, key: str) -> tuple[Path, ...]:
        v = self._get(key)
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(p, str) for p in v):
            raise self._fail(key, "a list of file names")
        return tuple(self.base / p for p in v)

    def table(self, key: str) -> _Table:
        v = self._get(key)
        if v is None:
            v = {}
        if not isinstance(v, dict):
            raise self._fail(key, "a table")
        return _Table(v, f"{self.where}{key}.", self.base)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            # every setting of this table has been read by now: the closest is the one meant
            hint = did_you_mean(unknown[0], self.used)
            raise ConfigError(f"unknown setting {self.where}{unknown[0]}{hint}")


# letters, digits and inner hyphens per label (RFC 1123); it goes into EHLO, the greeting
# and the addresses of notices, where a space or a line break would break or inject commands
_HOSTNAME = re.compile(r"(?!.{254})[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                       r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*", re.IGNORECASE)


def _hostname(name: str) -> str:
    if not name.isascii() or not _HOSTNAME.fullmatch(name):
        raise ConfigError(f"hostname: expected a host name like gw.example.com, got {name!r}")
    return name


def _enum(cls: type[E], value: str | None, default: E, where: str) -> E:
    if value is None:
        return default
    try:
        return cls(value)
    except ValueError:
        choices = " | ".join(repr(m.value) for m in cls)
        raise ConfigError(f"{where}: expected one of {choices}, got {value!r}") from None


def _one_source(file: Path | None, env: str | None, where: str, what: str) -> None:
    """A secret comes from a file or from the environment; with both, one would be
    silently ignored."""
    if file is not None and env:
        raise ConfigError(f"{where}: set either {what}_file or {what}_env, not both")


def _domain(t: _Table) -> DomainConfig:
    raw = t.text("name")
    if not raw:
        raise ConfigError(f"{t.where}name: every [[domain]] needs a name")
    try:
        name = normalize_domain(raw)
    except AddressError as exc:
        raise ConfigError(f"{t.where}name: {exc}") from None
    keys = t.paths("encryption_keys")
    if not keys:
        raise ConfigError(f"{t.where}encryption_keys: domain {name} needs at least one key")
    d = DomainConfig(
        name=name,
        encryption_keys=keys,
        signing_key=t.path("signing_key"),
        key_passphrase_file=t.path("key_passphrase_file"),
        key_passphrase_env=t.text("key_passphrase_env"),
        derived_keys=t.flag("derived_keys", False),
        accept_plain_keys=t.flag("accept_plain_keys", False),
    )
    if d.accept_plain_keys and not d.derived_keys:
        raise ConfigError(f"{t.where}accept_plain_keys: only with derived_keys = true "
                          "(without it every key is a plain one)")
    _one_source(d.key_passphrase_file, d.key_passphrase_env, t.where.rstrip("."),
                "key_passphrase")
    t.finish()
    return d


def _scan(t: _Table) -> ScanConfig:
    raw = t._get("command")
    if raw is None:
        command: tuple[str, ...] = ()
    elif isinstance(raw, str):
        command = tuple(shlex.split(raw))
    elif isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        command = tuple(raw)
    else:
        raise ConfigError(f"{t.where}command: expected a string or a list of strings")
    if command and "/" in command[0] and not Path(command[0]).is_absolute():
        # like every other path here: relative to this file, not to where serve started
        # (a bare name is left to the PATH lookup)
        command = (str(t.base / command[0]), *command[1:])
    s = ScanConfig(command, t.text("entry_point"), t.flag("scan_plain", False))
    if s.command and s.entry_point:
        raise ConfigError(f"{t.where}: set either command or entry_point, not both")
    t.finish()
    return s


def _check_binding_directory(directory: DirectoryConfig) -> None:
    """recipient_binding = "enforce" asks the directory's GET /v1/bindings, which answers
    gateway accounts over HTTP only."""
    where = "policy.recipient_binding: enforce asks the directory for whom each container was"
    _check_http_directory(directory, f"{where} issued")
    if not directory.username:
        raise ConfigError(f"{where} issued, which it answers to gateway accounts only: set "
                          "[directory] username and password_file")


def _check_genuine_directory(directory: DirectoryConfig, value: InboundGenuine) -> None:
    """inbound_genuine = "keep" and "reencrypt" ask the directory for genuine certificates
    of the served domains' mailboxes (over LDAP a gateway account asking for its own
    domain's address gets its signing container instead) and accept those chaining to
    genuine_roots: without any of that they would never keep or encrypt anything."""
    where = (f"policy.inbound_genuine: {value.value} asks the directory for the recipients' "
             "genuine")
    _check_http_directory(directory, f"{where} certificates")
    if not directory.username:
        raise ConfigError(f"{where} certificates as the gateway account: set [directory] "
                          "username and password_file")
    if not directory.genuine_roots:
        raise ConfigError(f"{where} certificates, and with no [directory] genuine_roots every "
                          "genuine certificate is ignored: set it")


def _check_http_directory(directory: DirectoryConfig, where: str) -> None:
    """A question the directory answers over HTTP only (`where`: the setting and what it
    asks)."""
    if directory.url is None:
        raise ConfigError(f"{where}: set [directory] url (https://)")
    if directory_url(directory.url).is_ldap:
        raise ConfigError(f"{where}, which it answers over HTTP only: set [directory] url to "
                          "its https:// address (the gateway then asks everything there)")


def parse_config(data: Mapping[str, Any], base: Path) -> GatewayConfig:
    """Build the configuration from parsed TOML; `base` resolves relative paths."""
    top = _Table(data, "", base)
    listen = parse_hostport(top.text("listen", DEFAULT_LISTEN), "listen")
    next_hop = parse_hostport(top.text("next_hop", DEFAULT_NEXT_HOP), "next_hop")
    raw_clients = top._get("allowed_clients")
    allowed_clients = (LOOPBACK_CLIENTS if raw_clients is None
                       else parse_allowed_clients(raw_clients))
    check_addresses(listen, next_hop, clients_listed=raw_clients is not None)
    size = top.number("max_message_size", DEFAULT_MAX_MESSAGE_SIZE, 1024, MAX_MESSAGE_SIZE)
    if size != int(size):
        raise ConfigError("max_message_size: expected a whole number of bytes")
    recipients = top.whole("max_recipients", DEFAULT_MAX_RECIPIENTS, MIN_RECIPIENTS,
                           MAX_RECIPIENTS)
    connections = top.whole("max_connections", DEFAULT_MAX_CONNECTIONS, 1, MAX_CONNECTIONS)

    dt = top.table("directory")
    url = dt.text("url")
    directory = DirectoryConfig(
        url=url,
        username=dt.text("username"),
        password_file=dt.path("password_file"),
        password_env=dt.text("password_env"),
        trust_anchor=dt.path("trust_anchor"),
        genuine_roots=dt.paths("genuine_roots"),
        base=dt.text("base", DEFAULT_LDAP_BASE) or DEFAULT_LDAP_BASE,
        tls_ca=dt.path("tls_ca"),
        starttls=dt.flag("starttls", _starttls_by_default(url)),
        negative_cache=dt.number("negative_cache", 60.0),
    )
    dt.finish()
    _one_source(directory.password_file, directory.password_env, "directory", "password")
    if directory.password_file or directory.password_env:
        if not directory.username:
            which = "password_file" if directory.password_file else "password_env"
            raise ConfigError(f"directory.{which}: the password needs a username (the "
                              "directory's gateway account)")
    elif directory.username and directory.url is not None:
        raise ConfigError(f"directory.username: {directory.username} needs a password: set "
                          "password_file or password_env")
    # Without a url only trust_anchor is used (it marks RecipientInfos as ours, inbound):
    # a forgotten url must not pass as a configured directory connection.
    idle = sorted(set(top._get("directory") or {}) - {"url", "trust_anchor"})
    if directory.url is None and idle:
        raise ConfigError(f"directory.url: missing, so directory.{idle[0]} would do nothing; "
                          "set url or remove that setting")
    if directory.url is not None:
        refusal = transport_refusal(directory.url, directory.starttls)  # reads the URL too
        if refusal:
            raise ConfigError(refusal)
        if directory.trust_anchor is None:
            raise ConfigError("directory.trust_anchor: needed to verify what the directory sends")

    raw_domains = top._get("domain") or []
    if not isinstance(raw_domains, list) or not all(isinstance(d, dict) for d in raw_domains):
        raise ConfigError("domain: expected [[domain]] tables")
    domains = tuple(
        _domain(_Table(d, f"domain[{i}].", base)) for i, d in enumerate(raw_domains)
    )
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise ConfigError("domain: a domain is listed twice")

    st = top.table("scan")
    scan = _scan(st)

    pt = top.table("policy")
    policy = PolicyConfig(
        outbound_no_genuine=_enum(
            NoGenuinePolicy,
            pt.text("outbound_no_genuine"),
            NoGenuinePolicy.ENCRYPT_ONLY,
            "policy.outbound_no_genuine",
        ),
        sign_all_outbound=pt.flag("sign_all_outbound", False),
        sign_subject_tag=pt.text("sign_subject_tag", "[sign]") or "",
        sign_header=pt.text("sign_header", "X-Keypost-Sign") or "",
        malformed=_enum(
            MalformedPolicy, pt.text("malformed"), MalformedPolicy.REJECT, "policy.malformed"
        ),
        recipient_binding=_enum(
            RecipientBinding, pt.text("recipient_binding"), RecipientBinding.OFF,
            "policy.recipient_binding",
        ),
        inbound_genuine=_enum(
            InboundGenuine, pt.text("inbound_genuine"), InboundGenuine.CLEAR,
            "policy.inbound_genuine",
        ),
    )
    pt.finish()
    if policy.recipient_binding is RecipientBinding.ENFORCE:
        _check_binding_directory(directory)
    if policy.inbound_genuine is not InboundGenuine.CLEAR:
        _check_genuine_directory(directory, policy.inbound_genuine)
    if policy.sign_all_outbound and any(d.signing_key is None for d in domains):
        raise ConfigError("policy.sign_all_outbound: every domain needs a signing_key")
    if policy.sign_all_outbound and directory.url is None:
        raise ConfigError("policy.sign_all_outbound: signing needs a [directory] url")

    tt = top.table("timeouts")
    defaults = Timeouts()
    timeouts = Timeouts(
        smtp_session=tt.number("smtp_session", defaults.smtp_session),
        processing=tt.number("processing", defaults.processing),
        next_hop=tt.number("next_hop", defaults.next_hop),
        directory=tt.number("directory", defaults.directory),
        scan=tt.number("scan", defaults.scan),
    )
    tt.finish()

    level = (top.text("log_level", "info") or "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level: expected debug, info, warning or error")
    protocol = (top.text("protocol", "smtp") or "smtp").lower()
    if protocol not in ("smtp", "lmtp"):
        raise ConfigError("protocol: expected \"smtp\" or \"lmtp\"")
    cfg = GatewayConfig(
        listen=listen,
        next_hop=next_hop,
        protocol=protocol,
        allowed_clients=allowed_clients,
        hostname=_hostname(top.text("hostname", DEFAULT_HOSTNAME) or DEFAULT_HOSTNAME),
        max_message_size=int(size),
        max_recipients=recipients,
        max_connections=connections,
        quarantine_dir=top.path("quarantine_dir") or base / DEFAULT_QUARANTINE,
        state_dir=top.path("state_dir") or base / DEFAULT_STATE,
        log_level=level,
        directory=directory,
        domains=domains,
        scan=scan,
        policy=policy,
        timeouts=timeouts,
    )
    top.finish()
    return cfg


def load_config(path: Path) -> GatewayConfig:
    """Read and check a gateway.toml. Raises ConfigError with a one-line reason."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, path.resolve().parent)
