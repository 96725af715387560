"""Fetching key containers from the directory over LDAP (ldap3) or HTTP (requests).

One connection per host session, reused; one LDAP search (or one HTTP request) asks for
all addresses at once. Returns raw certificates; verification happens in `resolve`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeVar

import ldap3
import requests
from cryptography import x509
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars

from keypost.core.address import parse_address
from keypost.core.containers import load_certificates, to_der
from keypost.core.dirurl import DirectoryUrl
from keypost.core.errors import KeypostError
from keypost.host.busy import DEFAULT_RETRY, Busy, BusyRetry, parse_retry_after
from keypost.host.errors import AuthenticationFailed, DirectoryFailure, DirectoryUnreachable
from keypost.host.paths import cache_dir, write_private
from keypost.host.tls_errors import describe_tls_failure

CERT_ATTRIBUTE = "userCertificate;binary"
MAX_PER_REQUEST = 100  # addresses per search/request: keeps filters and URLs a sane size
LDAP_INVALID_CREDENTIALS = 49
LDAP_BUSY = 51
# What `check` searches for: a real search proves the whole path (RFC 2606 .invalid).
PROBE_ADDRESS = "connection-test@keypost.invalid"


@dataclass(frozen=True)
class RawContainer:
    """One certificate as the directory served it (unverified)."""

    der: bytes
    gateway: str | None = None  # the gateway's domain when the directory says (HTTP)

    @classmethod
    def parsed(cls, cert: x509.Certificate, gateway: str | None = None) -> RawContainer:
        """A container from a certificate already parsed (HTTP reads PEM): not parsed
        again from its DER."""
        raw = cls(to_der(cert), gateway)
        raw.__dict__["certificate"] = cert  # where cached_property keeps its value
        return raw

    @cached_property
    def certificate(self) -> x509.Certificate | None:
        """The DER parsed once for all who ask (the resolver's verification, the cache's
        lifetimes); None when it is not a certificate."""
        try:
            return x509.load_der_x509_certificate(self.der)
        except ValueError:
            return None

    @property
    def validity(self) -> tuple[float, float] | None:
        """(not-before, not-after) in epoch seconds; None when it is not a certificate."""
        cert = self.certificate
        if cert is None:
            return None
        return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


class DirectoryClient(Protocol):
    """What the resolver needs from a directory transport."""

    def fetch(
        self, addresses: Sequence[str], while_waiting: Callable[[], object] | None = None
    ) -> dict[str, list[RawContainer]]:
        """Containers per address key (Address.key()) for the given bare addresses; an
        address the directory has nothing for maps to [] (or is absent).

        `while_waiting`: work to do while the request is in flight (called at most once;
        it may not be called at all, e.g. when no request is sent)."""
        ...

    def check(self) -> bool:
        """Connect, authenticate and search once; True when authenticated (False = anonymous)."""
        ...

    def close(self) -> None: ...


def _key(address: str) -> str | None:
    try:
        return parse_address(address).key()
    except KeypostError:
        return None


_T = TypeVar("_T")


class _TooMany(Exception):
    """The directory refused a request for naming more addresses than its own limit."""


def _in_batches(addresses: Sequence[str], ask: Callable[[Sequence[str]], _T],
                retry: BusyRetry, where: dict[str, Any]) -> list[_T]:
    """`ask` for MAX_PER_REQUEST addresses at a time. A directory configured with a lower
    limit (its `max_addresses`) refuses the whole request, as it must rather than answer
    part of it: the batch is halved until it fits, so every address is still asked for.
    A busy answer is asked again after a short wait, as `retry` allows for the whole call
    (both protocols come through here, so they retry alike)."""
    pending = [addresses[i : i + MAX_PER_REQUEST]
               for i in range(0, len(addresses), MAX_PER_REQUEST)]
    answers: list[_T] = []
    busy_answers = 0
    while pending:
        batch = pending.pop(0)
        try:
            answers.append(ask(batch))
        except Busy as exc:
            busy_answers += 1
            retry.wait_or_give_up(busy_answers, exc.retry_after, where)
            pending.insert(0, batch)
        except _TooMany:
            if len(batch) == 1:
                raise DirectoryFailure("the directory refuses even one address per request",
                                       {}) from None  # not a limit we can work with
            half = (len(batch) + 1) // 2
            pending[:0] = [batch[:half], batch[half:]]
    return answers


class LdapDirectoryClient:
    """LDAP via ldap3: LDAPS, or StartTLS on ldap:// (plain only on loopback)."""

    def __init__(
        self,
        url: DirectoryUrl,
        username: str | None,
        password: str | None,
        tls_ca_pem: bytes | None = None,
        timeout: float = 10.0,
        retry: BusyRetry = DEFAULT_RETRY,
    ) -> None:
        self._url = url
        self._retry = retry
        self._username = username
        self._password = password
        self._tls_ca = tls_ca_pem.decode("ascii", "replace") if tls_ca_pem else None
        self._timeout = timeout
        self._conn: ldap3.Connection | None = None
        self._while_waiting: Callable[[], object] | None = None
        self._notice: int | None = None  # resultCode of the server's notice of disconnection

    def _bind_dn(self) -> str:
        assert self._username
        if "=" in self._username:
            return self._username
        return f"uid={self._username},{self._url.base}"

    def _connect(self) -> ldap3.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_data=self._tls_ca)
        server = ldap3.Server(
            self._url.host,
            port=self._url.port,
            use_ssl=self._url.scheme == "ldaps",
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=self._timeout,
        )
        authenticated = bool(self._username)
        conn = ldap3.Connection(
            server,
            user=self._bind_dn() if authenticated else None,
            password=self._password if authenticated else None,
            authentication=ldap3.SIMPLE if authenticated else ldap3.ANONYMOUS,
            receive_timeout=max(1, math.ceil(self._timeout)),  # ldap3 packs it as an int
            read_only=True,
            raise_exceptions=False,
        )
        where = {"directory": self._url.url}
        self._hear_notices(conn)
        try:
            conn.open()
            # Plain LDAP only to a loopback address, and only when no TLS CA is configured.
            starttls = self._url.scheme == "ldap" and (not self._url.loopback or self._tls_ca)
            if starttls and not conn.start_tls():
                raise DirectoryUnreachable(
                    f"StartTLS with {self._url.host} failed: {conn.result.get('description')}",
                    where,
                )
            if authenticated and not conn.bind():
                code = conn.result.get("result")
                conn.unbind()
                if code == LDAP_BUSY:  # too many password checks: they clear quickly
                    raise Busy()
                if code == LDAP_INVALID_CREDENTIALS:
                    raise AuthenticationFailed("the directory refused the user name or password")
                raise DirectoryFailure(
                    f"the directory refused the bind: {conn.result.get('description')}", where
                )
        except ldap_exc.LDAPException as exc:
            if self._notice == LDAP_BUSY:  # refused at once: too many connections
                raise Busy() from None
            if isinstance(exc, ldap_exc.LDAPStartTLSError):
                why = describe_tls_failure(str(exc), self._url.host) or _first_line(str(exc))
                raise DirectoryUnreachable(
                    f"StartTLS with {self._url.host} failed: {why}", where
                ) from None
            # LDAPS: ldap3 wraps a refused handshake in LDAPSocketOpenError.
            tls = describe_tls_failure(str(exc), self._url.host)
            if tls and self._url.scheme == "ldaps":
                raise DirectoryUnreachable(
                    f"TLS with {self._url.host}:{self._url.port} failed: {tls}", where
                ) from None
            raise DirectoryUnreachable(
                f"cannot reach the directory at {self._url.host}:{self._url.port}: "
                f"{type(exc).__name__}",
                where,
            ) from None
        # ldap3 sends a search, then reads its answer in post_send_search (an attribute the
        # connection sets from its strategy): doing the caller's independent work between
        # the two hides it behind the directory's round trip.
        read_answer = conn.post_send_search

        def post_send_search(message_id: Any) -> Any:
            work, self._while_waiting = self._while_waiting, None
            if work is not None:
                work()
            return read_answer(message_id)

        conn.post_send_search = post_send_search
        self._conn = conn
        return conn

    def _hear_notices(self, conn: ldap3.Connection) -> None:
        """Note the resultCode of a notice of disconnection as ldap3 decodes it: ldap3
        raises LDAPSessionTerminatedByServerError without it, and the directory refuses a
        connection over its caps with such a notice saying busy."""
        self._notice = None
        strategy = conn.strategy
        for name in ("decode_response", "decode_response_fast"):  # ldap3 uses one of them
            decode = getattr(strategy, name, None)
            if decode is None:  # another ldap3 version: no notice heard, connections work
                continue

            def noting(message: Any, decode: Callable[[Any], Any] = decode) -> Any:
                answer = decode(message)
                if int(message["messageID"]) == 0 and isinstance(answer, dict):
                    self._notice = answer.get("result")  # unsolicited: only this notice
                return answer

            setattr(strategy, name, noting)

    def check(self) -> bool:
        self.fetch([PROBE_ADDRESS])
        return bool(self._username)

    def fetch(
        self, addresses: Sequence[str], while_waiting: Callable[[], object] | None = None
    ) -> dict[str, list[RawContainer]]:
        self._while_waiting = while_waiting
        try:
            return self._fetch(addresses)
        finally:
            self._while_waiting = None

    def _fetch(self, addresses: Sequence[str]) -> dict[str, list[RawContainer]]:
        found: dict[str, list[RawContainer]] = {}
        for entries in _in_batches(addresses, self._search_reconnecting, self._retry,
                                   {"directory": self._url.url}):
            for address, ders in entries:
                found.setdefault(address, []).extend(RawContainer(der) for der in ders)
        return found

    def _search_reconnecting(self, batch: Sequence[str]) -> list[tuple[str, list[bytes]]]:
        try:
            return self._search(batch)
        except (ldap_exc.LDAPSocketOpenError, ldap_exc.LDAPSessionTerminatedByServerError,
                ldap_exc.LDAPSocketReceiveError, ldap_exc.LDAPSocketSendError):
            self.close()
            if self._notice == LDAP_BUSY:
                raise Busy() from None
            # The server may close idle connections: reconnect once, then give up.
            try:
                return self._search(batch)
            except ldap_exc.LDAPException as exc:
                if self._notice == LDAP_BUSY:  # the new connection was refused: busy
                    self.close()
                    raise Busy() from None
                raise DirectoryUnreachable(
                    f"the directory connection failed: {type(exc).__name__}",
                    {"directory": self._url.url},
                ) from None

    def _search(self, batch: Sequence[str]) -> list[tuple[str, list[bytes]]]:
        conn = self._connect()
        terms = "".join(f"(mail={escape_filter_chars(a)})" for a in batch)
        flt = terms if len(batch) == 1 else f"(|{terms})"
        try:
            ok = conn.search(
                self._url.base,
                flt,
                search_scope=ldap3.SUBTREE,
                attributes=["mail", CERT_ATTRIBUTE],
            )
        except ldap_exc.LDAPException:
            raise
        except Exception:
            # The caller's work between request and answer failed: the answer was not
            # read, so the connection goes rather than hand it to the next search.
            self.close()
            raise
        result = conn.result or {}
        if not ok and result.get("result") == 11:  # adminLimitExceeded
            raise _TooMany
        if not ok and result.get("result") == LDAP_BUSY:
            raise Busy()
        if not ok and result.get("result") not in (0, 32, 4):  # success, noSuchObject, sizeLimit
            raise DirectoryFailure(
                f"the directory search failed: {result.get('description')}",
                {"directory": self._url.url},
            )
        out: list[tuple[str, list[bytes]]] = []
        for entry in conn.response or []:
            if entry.get("type") != "searchResEntry":
                continue
            raw: dict[str, list[bytes]] = entry.get("raw_attributes", {})
            address = _entry_address(entry.get("dn", ""), raw)
            if address is None:
                continue
            ders: list[bytes] = []
            for name, values in raw.items():
                if name.lower() in ("usercertificate;binary", "usercertificate"):
                    ders.extend(values)
            out.append((address, ders))
        return out

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(ldap_exc.LDAPException):
                self._conn.unbind()
            self._conn = None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no reason given"


def _entry_address(dn: str, raw: dict[str, list[bytes]]) -> str | None:
    """The entry's address: its `mail` value, else the `mail=` RDN of its DN."""
    for name, values in raw.items():
        if name.lower() == "mail" and values:
            return _key(values[0].decode("utf-8", "replace"))
    first = dn.split(",", 1)[0]
    attr, _, value = first.partition("=")
    if attr.strip().lower() == "mail":
        return _key(value.strip())
    return None


class HttpDirectoryClient:
    """The directory's HTTP API: GET /v1/containers?address=..&purpose=encrypt, Basic auth."""

    def __init__(
        self,
        url: DirectoryUrl,
        username: str | None,
        password: str | None,
        tls_ca_pem: bytes | None = None,
        timeout: float = 10.0,
        retry: BusyRetry = DEFAULT_RETRY,
    ) -> None:
        self._url = url
        self._retry = retry
        self._timeout = timeout
        self._session = requests.Session()
        if username:
            self._session.auth = (username, password or "")
        # Passed with every request, not set on the session: requests lets the environment's
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override Session.verify (psf/requests#3829), and
        # many machines set those, so the configured directory CA would be ignored.
        self._verify: str | bool = True
        if tls_ca_pem:
            # requests wants a file: keep one per CA content in the cache dir.
            digest = hashlib.sha256(tls_ca_pem).hexdigest()[:16]
            path = cache_dir() / f"tls-ca-{digest}.pem"
            if not path.exists():
                write_private(path, tls_ca_pem)
            self._verify = str(Path(path))
        self._authenticated = bool(username)

    def _get(self, addresses: Sequence[str]) -> Any:
        params = [("address", a) for a in addresses] + [("purpose", "encrypt")]
        where = {"directory": self._url.url}
        try:
            resp = self._session.get(
                f"{self._url.http_base}/v1/containers", params=params, timeout=self._timeout,
                verify=self._verify,
            )
        except requests.exceptions.SSLError as exc:
            tls = describe_tls_failure(str(exc), self._url.host) or "the TLS handshake failed"
            raise DirectoryUnreachable(
                f"TLS with {self._url.host}:{self._url.port} failed: {tls}", where
            ) from None
        except requests.RequestException as exc:
            raise DirectoryUnreachable(
                f"cannot reach the directory at {self._url.host}:{self._url.port}: "
                f"{type(exc).__name__}",
                where,
            ) from None
        if resp.status_code == 403 and "tls_required" in resp.text:
            # keypost directory --cleartext-passwords: the password was not even checked
            raise DirectoryFailure("the directory takes passwords only over TLS: use https://",
                                   where)
        if resp.status_code == 400 and "too_many_addresses" in resp.text:
            raise _TooMany
        if resp.status_code == 503:  # overloaded for now (the directory says "busy")
            raise Busy(parse_retry_after(resp.headers.get("Retry-After")))
        if resp.status_code in (401, 403):
            raise AuthenticationFailed("the directory refused the user name or password")
        if resp.status_code != 200:
            raise DirectoryFailure(f"the directory answered HTTP {resp.status_code}", where)
        try:
            return resp.json()
        except ValueError:
            raise DirectoryFailure("the directory answered with malformed JSON", where) from None

    def check(self) -> bool:
        self.fetch([PROBE_ADDRESS])
        return self._authenticated

    def fetch(
        self, addresses: Sequence[str], while_waiting: Callable[[], object] | None = None
    ) -> dict[str, list[RawContainer]]:
        # requests blocks from request to answer: nothing to overlap, while_waiting unused.
        found: dict[str, list[RawContainer]] = {}
        for data in _in_batches(addresses, self._get, self._retry,
                                {"directory": self._url.url}):
            try:
                for item in data["results"]:
                    key = _key(str(item["address"]))
                    if key is None:
                        continue
                    bucket = found.setdefault(key, [])
                    for c in item.get("containers", []):
                        if c.get("format", "x509") != "x509":
                            continue
                        gateway = c.get("gateway")
                        for cert in load_certificates(str(c["pem"]).encode("ascii")):
                            bucket.append(
                                RawContainer.parsed(cert, str(gateway) if gateway else None)
                            )
            except (KeyError, TypeError, AttributeError, KeypostError, UnicodeError):
                raise DirectoryFailure(
                    "the directory's answer is not in the expected form",
                    {"directory": self._url.url},
                ) from None
        return found

    def close(self) -> None:
        self._session.close()


def make_client(
    url: DirectoryUrl,
    username: str | None,
    password: str | None,
    tls_ca_pem: bytes | None = None,
    timeout: float = 10.0,
    retry: BusyRetry = DEFAULT_RETRY,
) -> DirectoryClient:
    if url.is_ldap:
        return LdapDirectoryClient(url, username, password, tls_ca_pem, timeout, retry)
    return HttpDirectoryClient(url, username, password, tls_ca_pem, timeout, retry)
