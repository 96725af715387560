"""Configuration parsing, defaults, refusals, and private key file permissions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gw_support import KEYPOST, Pki, write_private

from keypost.core.containers import DirectoryCA, to_pem
from keypost.gateway.config import (
    GatewayConfig,
    MalformedPolicy,
    NoGenuinePolicy,
    load_config,
    parse_config,
)
from keypost.gateway.errors import ConfigError
from keypost.gateway.keys import check_private_file, load_private_key, read_secret
from keypost.gateway.serve import build, check_bound_ports

SAMPLE = Path(__file__).resolve().parents[2] / "gateway" / "gateway.toml"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`keypost gateway check-config` as an administrator runs it."""
    return subprocess.run([*KEYPOST, "gateway", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_sample_config_parses_with_documented_values() -> None:
    cfg = load_config(SAMPLE)
    base = SAMPLE.parent
    assert str(cfg.listen) == "127.0.0.1:10025"
    assert str(cfg.next_hop) == "127.0.0.1:10026"
    assert cfg.directory.url == "ldap://127.0.0.1:3890"
    assert cfg.directory.password_file == base / "gw.pass"
    assert cfg.domains[0].name == "example.com"
    assert cfg.domains[0].encryption_keys == (base / "enc-current.key", base / "enc-retired.key")
    assert cfg.policy.outbound_no_genuine is NoGenuinePolicy.ENCRYPT_ONLY
    assert cfg.policy.malformed is MalformedPolicy.REJECT
    assert cfg.timeouts.directory == 10
    assert cfg.state_dir == base / "state"


def test_defaults_match_the_dataclass_defaults(tmp_path: Path) -> None:
    cfg = parse_config({}, tmp_path)
    default = GatewayConfig()
    assert cfg.listen == default.listen and cfg.next_hop == default.next_hop
    assert cfg.policy == default.policy and cfg.timeouts == default.timeouts
    assert cfg.quarantine_dir == tmp_path / "quarantine"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.directory.url is None and cfg.domains == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"listen": "nohost"}, "listen"),
        ({"lisen": "1.2.3.4:5"}, "unknown setting lisen"),
        ({"policy": {"malformed": "drop"}}, "policy.malformed"),
        ({"policy": {"outbound_no_genuine": "maybe"}}, "outbound_no_genuine"),
        ({"directory": {"url": "ftp://x"}}, "directory.url"),
        ({"directory": {"url": "ldap://x:1"}}, "trust_anchor"),
        # a forgotten url: [directory] but trust_anchor would silently do nothing
        ({"directory": {"username": "gw", "trust_anchor": "ca.pem"}},
         "directory.url: missing, so directory.username"),
        ({"domain": [{"name": "example.com"}]}, "encryption_keys"),
        ({"domain": [{"name": "bad domain", "encryption_keys": ["k"]}]}, "name"),
        ({"timeouts": {"scan": -1}}, "timeouts.scan"),
        # nan passed `<= 0` (every message then timed out at once or failed in smtplib);
        # inf or 1e300 overflowed socket.settimeout and timedelta, after check-config said OK
        ({"timeouts": {"processing": float("nan")}}, "timeouts.processing"),
        ({"timeouts": {"next_hop": float("inf")}}, "timeouts.next_hop"),
        ({"timeouts": {"smtp_session": 1e300}}, "timeouts.smtp_session"),
        ({"directory": {"negative_cache": float("nan")}}, "directory.negative_cache"),
        ({"max_message_size": float("nan")}, "max_message_size"),
        ({"max_message_size": float("inf")}, "max_message_size"),
        ({"max_message_size": 1024.5}, "max_message_size"),
        # no TLS, no authentication: anyone reaching it could relay and have mail signed
        ({"listen": "0.0.0.0:10025"}, "listen: 0.0.0.0 is not a loopback address"),
        ({"listen": "[::]:10025"}, "listen: :: is not a loopback address"),
        ({"listen": "192.0.2.7:10025"}, "listen: 192.0.2.7 is not a loopback address"),
        # the way out is named in the same line
        ({"listen": "192.0.2.7:10025"}, "list the MTA's addresses in allowed_clients"),
        # a mail loop: every message re-enters the gateway until the timeouts
        ({"next_hop": "127.0.0.1:10025"}, "next_hop: .* is where the gateway listens"),
        ({"listen": "localhost:2525", "next_hop": "[::1]:2525"}, "where the gateway listens"),
        ({"next_hop": "127.0.0.1:0"}, "next_hop"),
        # EHLO name and greeting: a line break would inject a command into the next hop
        ({"hostname": "gw.example.com\r\nRSET"}, "hostname"),
        ({"hostname": "gw example"}, "hostname"),
        ({"scan": {"command": "x", "entry_point": "y"}}, "either"),
        (
            {"policy": {"sign_all_outbound": True},
             "domain": [{"name": "example.com", "encryption_keys": ["k"]}]},
            "signing_key",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(
    tmp_path: Path, data: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data, tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lisen": "1.2.3.4:5"}, "unknown setting lisen (did you mean listen?)"),
        ({"policy": {"sign_subjet_tag": ""}},
         "unknown setting policy.sign_subjet_tag (did you mean sign_subject_tag?)"),
        ({"xyzzy": 1}, "unknown setting xyzzy"),  # nothing like it: no guess
    ],
)
def test_a_mistyped_setting_is_named_with_the_one_meant(
    tmp_path: Path, data: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, tmp_path)
    assert str(err.value) == message


def test_loopback_listen_addresses_and_host_names_are_accepted(tmp_path: Path) -> None:
    for listen in ("127.0.0.1:2525", "[::1]:2525", "localhost:2525"):
        assert parse_config({"listen": listen}, tmp_path).listen.port == 2525
    cfg = parse_config({"listen": "127.0.0.1:2525", "next_hop": "mx.example.net:2525",
                        "hostname": "gw-1.mail.example.com"}, tmp_path)
    assert cfg.next_hop.host == "mx.example.net" and cfg.hostname == "gw-1.mail.example.com"


@pytest.mark.parametrize(
    ("clients", "message"),
    [
        ("192.0.2.10", "allowed_clients: expected a list of IP addresses or networks"),
        ([], "allowed_clients: empty"),
        ([10], "allowed_clients: expected a list of IP addresses or networks"),
        (["mta.example.com"], "'mta.example.com' is no IP address or network .*host names"),
        (["192.0.2.300"], "'192.0.2.300' is no IP address or network"),
        (["192.0.2.0/33"], "'192.0.2.0/33' is no IP address or network"),
        (["192.0.2.10/24"], "'192.0.2.10/24' has host bits set"),
        (["fe80::1%eth0"], "zone id"),
        # a catch-all admits everyone: the very thing the loopback rule prevented
        (["0.0.0.0/0"], "0.0.0.0/0 admits every IPv4 address"),
        (["::/0"], "::/0 admits every IPv6 address"),
        (["::ffff:0:0/96"], "admits every IPv4 address"),  # IPv4-mapped: every IPv4 peer
        (["0.0.0.0/1", "128.0.0.0/1"], "together admit every IPv4 address"),
        (["0.0.0.0"], "0.0.0.0 is no client address"),
        (["::"], ":: is no client address"),
    ],
)
def test_bad_allowed_clients_are_one_line_errors(
    tmp_path: Path, clients: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config({"allowed_clients": clients}, tmp_path)
    assert "\n" not in str(caught.value)


def test_allowed_clients_are_read_as_networks(tmp_path: Path) -> None:
    from ipaddress import ip_network

    cfg = parse_config({"allowed_clients": ["192.0.2.10", "2001:db8::/64", "[::1]",
                                            "::ffff:198.51.100.0/120"]}, tmp_path)
    # an IPv4-mapped entry is its IPv4 network: a dual-stack socket's peers are read so too
    assert cfg.allowed_clients == tuple(ip_network(n) for n in (
        "192.0.2.10/32", "2001:db8::/64", "::1/128", "198.51.100.0/24"))
    # unset: loopback only
    assert [str(n) for n in parse_config({}, tmp_path).allowed_clients] == [
        "127.0.0.0/8", "::1/128"]


def test_allowed_clients_open_a_listen_address_that_is_not_loopback(tmp_path: Path) -> None:
    """The MTA in another container or on another host: the gateway listens there and talks
    to the listed peers only (test_clients checks that at the socket)."""
    for listen in ("192.0.2.7:10025", "0.0.0.0:10025", "[::]:10025"):
        cfg = parse_config({"listen": listen, "next_hop": "192.0.2.25:10026",
                            "allowed_clients": ["192.0.2.25"]}, tmp_path)
        assert str(cfg.listen) == listen.replace("[", "").replace("]", "")
    cfg_file = tmp_path / "gw.toml"
    cfg_file.write_text('listen = "192.0.2.7:10025"\nnext_hop = "192.0.2.25:10026"\n'
                        'allowed_clients = ["192.0.2.25", "2001:db8:25::/64"]\n')
    done = check_config(cfg_file)
    assert done.returncode == 0, done.stderr
    assert "listen on 192.0.2.7:10025" in done.stdout
    assert "clients allowed to connect: 192.0.2.25, 2001:db8:25::/64" in done.stdout


def test_check_config_prints_the_allowed_clients(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('allowed_clients = ["192.0.2.10", "2001:db8::/64"]\n')
    done = check_config(cfg)
    assert done.returncode == 0, done.stderr
    assert "clients allowed to connect: 192.0.2.10, 2001:db8::/64" in done.stdout
    cfg.write_text('allowed_clients = ["0.0.0.0/0"]\n')
    bad = check_config(cfg)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert "allowed_clients: 0.0.0.0/0 admits every IPv4 address" in bad.stderr
    cfg.write_text("")
    default = check_config(cfg)
    assert "clients allowed to connect: 127.0.0.0/8, ::1 (loopback only" in default.stdout


def test_scan_command_string_is_split_like_a_shell(tmp_path: Path) -> None:
    cfg = parse_config({"scan": {"command": "/bin/scan --mode 'a b'"}}, tmp_path)
    assert cfg.scan.command == ("/bin/scan", "--mode", "a b")


def test_key_files_readable_by_others_are_refused(tmp_path: Path, pki: Pki) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki.path("enc-current.key").read_bytes())
    os.chmod(loose, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(loose, None)
    os.chmod(loose, 0o600)
    assert load_private_key(loose, None).key_size == 2048  # type: ignore[union-attr]


@pytest.mark.parametrize("which", [0, 1])  # the current key, a retired key
def test_an_ec_encryption_key_is_loaded_and_one_off_the_agreement_curves_refused(
        tmp_path: Path, which: int) -> None:
    """EC P-256/384/521 keys decrypt (ECDH key agreement) beside RSA ones, current or
    retired; a P-224 key cannot, and the refusal names its file and domain (the S/MIME
    engine's own message named neither)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from pki_util import key_pem

    from keypost.gateway.config import DomainConfig
    from keypost.gateway.keys import load_domain_keys

    paths = [tmp_path / "current.key", tmp_path / "retired.key"]
    for curve, loads in ((ec.SECP384R1(), True), (ec.SECP224R1(), False)):
        for i, path in enumerate(paths):
            key = ec.generate_private_key(curve) if i == which else \
                rsa.generate_private_key(65537, 2048)
            write_private(path, key_pem(key))
        domain = DomainConfig(name="example.com", encryption_keys=tuple(paths))
        if loads:
            assert len(load_domain_keys(domain).fingerprints) == 2
            continue
        with pytest.raises(ConfigError) as caught:
            load_domain_keys(domain)
        message = str(caught.value)
        assert str(paths[which]) in message and "example.com" in message
        assert "P-224" in message and "P-256, P-384 or P-521" in message


def test_a_signing_key_no_mail_client_verifies_is_refused(tmp_path: Path) -> None:
    """A P-224 or secp256k1 signing key was loaded, and the gateway signed mail whose
    signatures Thunderbird (NSS) and other clients cannot verify; the directory already
    refuses to register such a key. P-256 and RSA-2048 load."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from pki_util import key_pem

    from keypost.gateway.config import DomainConfig
    from keypost.gateway.keys import load_domain_keys

    enc, sig = tmp_path / "enc.key", tmp_path / "sig.key"
    write_private(enc, key_pem(rsa.generate_private_key(65537, 2048)))
    for key, shown in ((ec.generate_private_key(ec.SECP224R1()), "EC P-224"),
                       (ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
                       (ec.generate_private_key(ec.SECP256R1()), None),
                       (rsa.generate_private_key(65537, 2048), None)):
        write_private(sig, key_pem(key))
        domain = DomainConfig(name="example.com", encryption_keys=(enc,), signing_key=sig)
        if shown is None:
            assert load_domain_keys(domain).signing_key is not None
            continue
        with pytest.raises(ConfigError) as caught:
            load_domain_keys(domain)
        message = str(caught.value)
        assert str(sig) in message and "example.com" in message and shown in message
        assert "P-256, P-384 or P-521" in message


def test_check_config_warns_when_no_domain_is_served(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('listen = "127.0.0.1:10025"\nnext_hop = "127.0.0.1:10026"\n')
    done = check_config(cfg)
    assert done.returncode == 0, done.stderr
    assert "warning: no [[domain]]" in done.stdout and "configuration OK" in done.stdout


def test_wrong_passphrase_message_holds_no_key_material(tmp_path: Path, pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization

    enc = pki.current.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"right"),
    )
    path = write_private(tmp_path / "enc.key", enc)
    with pytest.raises(ConfigError) as err:
        load_private_key(path, b"hunter2x")
    assert "BEGIN" not in str(err.value) and "hunter2x" not in str(err.value)
    assert load_private_key(path, b"right").key_size == 2048  # type: ignore[union-attr]


def test_secrets_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write_private(tmp_path / "pw", b"s3cret\nignored\n")
    assert read_secret(p, None, "x") == b"s3cret"
    monkeypatch.setenv("GW_PW", "from-env")
    assert read_secret(None, "GW_PW", "x") == b"from-env"
    with pytest.raises(ConfigError, match="NOPE"):
        read_secret(None, "NOPE", "x")
    os.chmod(p, 0o644)
    with pytest.raises(ConfigError):
        check_private_file(p)


def test_check_config_refuses_loose_keys_and_prints_no_secrets(tmp_path: Path, pki: Pki) -> None:
    cfg = pki.config(next_hop=2525)
    ok = check_config(cfg)
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout
    assert "domain example.com" in ok.stdout and "1 retired key" in ok.stdout
    assert "PRIVATE KEY" not in ok.stdout + ok.stderr
    os.chmod(pki.path("enc-retired.key"), 0o644)
    try:
        bad = check_config(cfg)
    finally:
        os.chmod(pki.path("enc-retired.key"), 0o600)
    assert bad.returncode == 1
    assert "readable by others" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("directory", "domain", "message"),
    [
        # serve stopped with a UnicodeDecodeError traceback
        ('username = "gw"\npassword_file = "pw-latin1"', "", "directory password"),
        # ldap3 raised LDAPSSLConfigurationError (a traceback); over https every request
        # failed later (requests raises OSError for it): 451 for all mail after "OK"
        ('tls_ca = "nope.pem"', "", "directory.tls_ca: .*nope.pem"),
        ('tls_ca = "enc-current.key"', "", "directory.tls_ca: .*no PEM certificate"),
        ('url = "https://127.0.0.1:8443"\ntls_ca = "nope.pem"', "", "directory.tls_ca"),
        # ldap3 refuses a simple bind without a password: every search a 451 after "OK"
        ('username = "gw"', "", "directory.username: .*password_file or password_env"),
        ('password_file = "pw"', "", "directory.password_file: .*username"),
        ('username = "gw"\npassword_file = "pw"\npassword_env = "PW"', "",
         "directory: set either password_file or password_env"),
        ("", 'key_passphrase_file = "pw"\nkey_passphrase_env = "PW"',
         r"domain\[0\]: set either key_passphrase_file or key_passphrase_env"),
    ],
)
def test_directory_settings_serve_would_fail_on_are_refused_by_check_config(
    tmp_path: Path, pki: Pki, directory: str, domain: str, message: str
) -> None:
    write_private(pki.path("pw"), b"pw\n")
    write_private(pki.path("pw-latin1"), "pässwort\n".encode("latin-1"))
    url = "" if "url =" in directory else 'url = "ldaps://127.0.0.1:6360"\n'
    cfg = pki.config(2525, directory=f'{url}trust_anchor = "ca.pem"\n{directory}',
                     domain_extra=domain)
    done = check_config(cfg)
    assert done.returncode == 1, done.stdout
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert re.search(message, done.stderr), done.stderr


# Start-up reads each [directory] file once -----------------------------------------

_opened: list[str] | None = None  # paths the audit hook records while a test watches


def _record_open(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], str | bytes | Path):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_record_open)  # (cannot be removed: records only while _opened is a list)


def test_start_reads_the_password_and_the_genuine_roots_once(tmp_path: Path, pki: Pki) -> None:
    """build read genuine_roots twice (the directory client's and the signature check's
    copy) and the password twice (the container fetcher's and the bindings client's): a
    file replaced in between gave the gateway two views, a password was held twice. Every
    open() is seen through Python's audit hook, the code under test is not touched."""
    global _opened
    password = write_private(tmp_path / "directory.pw", b"pw\n")
    roots = tmp_path / "genuine-roots.pem"
    roots.write_bytes(to_pem(DirectoryCA.generate().certificate))
    cfg = load_config(pki.config(2525, extra='[policy]\nrecipient_binding = "enforce"',
                                 directory=f'url = "http://127.0.0.1:8080"\n'
                                           f'trust_anchor = "ca.pem"\nusername = "gw"\n'
                                           f'password_file = "{password}"\n'
                                           f'genuine_roots = ["{roots}"]'))
    _opened = []
    try:
        gw = build(cfg, keep_state=False)
    finally:
        seen, _opened = _opened, None
    assert gw.pipeline.bindings is not None  # the bindings client needs the password too
    assert seen.count(str(password)) == 1, seen
    assert seen.count(str(roots)) == 1, seen
    assert seen.count(str(pki.path("ca.pem"))) == 1, seen


def test_a_port_the_kernel_picked_must_not_be_the_next_hop(tmp_path: Path) -> None:
    """`listen = "...:0"` passes the load-time loop check; the port the kernel then hands
    out is checked again: the next hop's (free, in the ephemeral range) would be a loop."""
    cfg = parse_config({"listen": "127.0.0.1:0", "next_hop": "127.0.0.1:40123"}, tmp_path)
    check_bound_ports(cfg, [40124])  # any other port is fine
    with pytest.raises(ConfigError, match=r"next_hop: 127.0.0.1:40123 is where the gateway"):
        check_bound_ports(cfg, [40123])
