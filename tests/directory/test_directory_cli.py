"""`keypost directory ...` administration through the real command line: effects and
one-line errors with a non-zero exit (never a traceback)."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from dir_support import KEYPOST, keypost, write_rsa


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    keypost("directory", "init", "--data", str(root / "d"), "--ca-key-type", "rsa-3072",
            "--suffix", "dc=example,dc=test")
    _, pub = write_rsa(root / "gw.pem")
    keypost("directory", "domain", "add", "Example.NET", "--encryption-cert", str(pub),
            "--capabilities", "aes128-cbc", "--data", str(root / "d"))
    return root / "d"


def one_line_error(*args: str, stdin: str | None = None) -> str:
    done = keypost(*args, stdin=stdin, check=False)
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return str(lines[0])


def test_init_makes_private_ca_key_and_settings(data: Path) -> None:
    assert stat.S_IMODE((data / "ca-key.pem").stat().st_mode) == 0o600
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca_key = x509.load_pem_x509_certificate((data / "ca.pem").read_bytes()).public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey) and ca_key.key_size == 3072  # --ca-key-type
    assert 'suffix = "dc=example,dc=test"' in (data / "directory.toml").read_text()
    export = keypost("directory", "ca", "export", "--data", str(data))
    # `ca export > ca.pem` is the trust anchor alone; the fingerprint is for the eyes
    assert export.stdout == (data / "ca.pem").read_text()
    assert export.stderr.startswith("SHA-256 fingerprint: ")
    assert "already initialised" in one_line_error("directory", "init", "--data", str(data))


def test_domain_list_shows_normalised_domain_and_capabilities(data: Path) -> None:
    out = keypost("directory", "domain", "list", "--data", str(data)).stdout
    assert out.splitlines()[0] == "example.net" and "[aes128-cbc]" in out


def test_rekey_keeps_history(data: Path, tmp_path: Path) -> None:
    _, pub = write_rsa(tmp_path / "new.pem")
    out = keypost("directory", "domain", "rekey", "example.net", "--encryption-cert", str(pub),
                  "--data", str(data)).stdout
    assert "retired" in out
    listing = keypost("directory", "domain", "list", "--history", "--data", str(data)).stdout
    assert listing.count("encryption") == 2 and "current" in listing and "retired" in listing
    assert "[aes128-cbc]" in listing.splitlines()[1]  # capabilities carried over


def test_accounts_add_list_remove(data: Path) -> None:
    keypost("directory", "account", "add", "carol", "--role", "gateway", "--domain",
            "example.net", "--password-stdin", "--data", str(data), stdin="pw\n")
    assert "carol\tgateway\texample.net" in keypost(
        "directory", "account", "list", "--data", str(data)).stdout
    digest = sqlite3.connect(data / "directory.db").execute(
        "SELECT digest FROM accounts WHERE name = 'carol'").fetchone()[0]
    assert b"pw" not in digest and len(digest) == 32
    keypost("directory", "account", "remove", "carol", "--data", str(data))
    assert "no account named carol" in one_line_error(
        "directory", "account", "remove", "carol", "--data", str(data))


def test_genuine_add_and_remove(data: Path, tmp_path: Path) -> None:
    from pki_util import ec_key, self_signed

    from keypost.core.containers import to_pem

    cert = self_signed(ec_key(), "Dora", "Dora@Example.net")
    path = tmp_path / "dora.pem"
    path.write_bytes(to_pem(cert))
    out = keypost("directory", "genuine", "add", str(path), "--data", str(data)).stdout
    assert "dora@example.net" in out
    from keypost.core.containers import sha256_fingerprint

    listed = keypost("directory", "genuine", "list", "--data", str(data)).stdout
    assert listed.splitlines() == [
        f"dora@example.net\t{sha256_fingerprint(cert)}\t"
        f"{cert.not_valid_after_utc:%Y-%m-%d}"]
    keypost("directory", "genuine", "remove", "dora@example.net", "--data", str(data))
    assert keypost("directory", "genuine", "list", "--data", str(data)).stdout == ""
    assert "no genuine certificate" in one_line_error(
        "directory", "genuine", "remove", "dora@example.net", "--data", str(data))


@pytest.mark.parametrize("args, expected", [
    (["domain", "add", "x.org", "--encryption-cert", "/nonexistent.pem"], "cannot read"),
    (["domain", "add", "x.org", "--encryption-cert", "/etc/hostname"],
     "/etc/hostname: unreadable"),
    # which of the two files it was (the line named neither)
    (["domain", "add", "x.org", "--encryption-cert", "@PUB", "--signing-cert",
      "/etc/hostname"], "/etc/hostname: unreadable"),
    (["domain", "rekey", "nope.org", "--encryption-cert", "@PUB"], "unknown domain"),
    (["domain", "remove", "nope.org"], "unknown domain"),
    (["domain", "add", "example.net", "--encryption-cert", "@PUB"], "already registered"),
    (["domain", "add", "x.org", "--encryption-cert", "@PUB", "--capabilities", "des"],
     "unknown capability"),
    (["domain", "add", "not a domain", "--encryption-cert", "@PUB"], "invalid"),
    (["account", "add", "dave", "--role", "user", "--domain", "nope.org", "--password-stdin"],
     "unknown domain"),
    (["genuine", "add", "@PUB"], "certificate"),
    (["genuine", "remove", "not-an-address"], "invalid address"),
])
def test_error_paths_are_one_line(data: Path, tmp_path: Path, args: list[str],
                                  expected: str) -> None:
    _, pub = write_rsa(tmp_path / "k.pem")
    argv = [str(pub) if a == "@PUB" else a for a in args]
    line = one_line_error("directory", *argv, "--data", str(data), stdin="pw\n")
    assert line.startswith("keypost: error: ") and expected in line, line


def test_uninitialised_data_dir(tmp_path: Path) -> None:
    line = one_line_error("directory", "account", "list", "--data", str(tmp_path / "none"))
    assert "not an initialised directory" in line
    # the way out, for a new operator who ran init elsewhere or not at all
    assert f"keypost directory init --data {tmp_path / 'none'}" in line
    assert "$KEYPOST_DIRECTORY_DATA" in line
    line = one_line_error("directory", "serve", "--data", str(tmp_path / "none"))
    assert "not an initialised directory" in line


def test_serve_refuses_bad_setups_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d"
    keypost("directory", "init", "--data", str(data))
    (data / "ca-key.pem").chmod(0o644)
    assert "readable by others" in one_line_error("directory", "serve", "--data", str(data),
                                                  "--ldap", "127.0.0.1:0")
    (data / "ca-key.pem").chmod(0o600)
    for tls_listener in ("--ldaps", "--https"):
        assert "need --tls-cert" in one_line_error(
            "directory", "serve", "--data", str(data), "--ldap", "127.0.0.1:0", tls_listener,
            "127.0.0.1:0")
    assert "HOST:PORT" in one_line_error("directory", "serve", "--data", str(data),
                                         "--ldap", "nowhere")
    assert "TLS certificate" in one_line_error(
        "directory", "serve", "--data", str(data), "--ldap", "127.0.0.1:0",
        "--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname")
    settings = data / "directory.toml"
    settings.write_text(settings.read_text().replace("encrypt_hours = 24", "encrypt_hours = 48"))
    assert "encrypt_hours" in one_line_error("directory", "serve", "--data", str(data),
                                             "--ldap", "127.0.0.1:0")
    text = settings.read_text().replace("encrypt_hours = 48", "encrypt_hours = 24")
    settings.write_text(text.replace('url = ""', 'url = "keys.example.org"'))
    assert "url: invalid directory URL" in one_line_error("directory", "serve", "--data",
                                                          str(data), "--ldap", "127.0.0.1:0")
    settings.write_text(settings.read_text() + "\nbogus = 1\n")
    assert "unknown setting" in one_line_error("directory", "serve", "--data", str(data))
    settings.write_text(settings.read_text().replace("bogus = 1", "cache_sise = 10"))
    assert "unknown setting 'cache_sise' (did you mean cache_size?)" in one_line_error(
        "directory", "serve", "--data", str(data))


def test_serve_shuts_down_cleanly_and_flushes(tmp_path: Path) -> None:
    import signal
    import subprocess

    import ldap3
    from dir_support import KEYPOST, SUFFIX

    data = tmp_path / "d"
    keypost("directory", "init", "--data", str(data))
    _, pub = write_rsa(tmp_path / "gw.pem")
    keypost("directory", "domain", "add", "example.com", "--encryption-cert", str(pub),
            "--data", str(data))
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([*KEYPOST, "directory", "serve", "--data", str(data),
                                 "--ldap", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        # over LDAP: its anonymous requestors are named by address, so their containers
        # are kept for reuse (issued rows); HTTP's are until it hands over the peer
        url = next(x.split()[1] for x in lines if x.startswith("listening ldap://"))
        address = f"flush-{sig.name.lower()}@example.com"
        conn = ldap3.Connection(ldap3.Server(url.rsplit("/", 1)[0]), auto_bind=True)
        assert conn.search(SUFFIX, f"(mail={address})", attributes=["userCertificate;binary"])
        assert len(conn.response) == 1
        conn.unbind()
        proc.send_signal(sig)  # at once: the batched writes have not run yet
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "event=shutdown" in err and "Traceback" not in err
    rows = sqlite3.connect(data / "directory.db").execute(
        "SELECT address_key FROM issued ORDER BY address_key").fetchall()
    assert [r[0] for r in rows] == ["flush-sigint@example.com", "flush-sigterm@example.com"]
    audit = sqlite3.connect(data / "directory.db").execute("SELECT COUNT(*) FROM audit")
    assert audit.fetchone()[0] == 2


def test_account_add_without_terminal_or_password_stdin_is_one_line(data: Path) -> None:
    # No controlling terminal (new session) and stdin at EOF: a script or service unit
    # that forgot --password-stdin. getpass used to warn and end in a traceback.
    import subprocess

    from dir_support import KEYPOST

    done = subprocess.run([*KEYPOST, "directory", "account", "add", "erin", "--role", "user",
                           "--domain", "example.net", "--data", str(data)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, start_new_session=True)
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("keypost: error: ") and "--password-stdin" in lines[0]
    assert "erin" not in keypost("directory", "account", "list", "--data", str(data)).stdout



def test_init_refuses_a_directory_url_no_client_could_use(tmp_path: Path) -> None:
    """The URL goes into every container: refused before the data dir is made."""
    for url in ("not a url", "ftp://keys.example.org/", "https://"):
        line = one_line_error("directory", "init", "--data", str(tmp_path / "d"), "--url", url)
        assert "invalid directory URL" in line, url
        assert not (tmp_path / "d").exists()


def test_ca_export_into_a_closed_pipe_is_quiet(data: Path) -> None:
    """`keypost directory ca export | head -1` once the reader has gone: no 'cannot access:
    Broken pipe', no traceback. Our read end is closed before the command writes (it is
    the only one), so its write meets a pipe without a reader every time."""
    proc = subprocess.Popen([*KEYPOST, "directory", "ca", "export", "--data", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert err == b""
    assert proc.returncode == 1


def test_gateway_key_file_must_hold_one_current_public_key(data: Path, tmp_path: Path) -> None:
    """A gateway's key file is stored as registered: one with the private key beside the
    certificate (`cat key.pem cert.pem`) put that private key into the store, a chain
    registered whichever certificate came first, an expired certificate a stale key."""
    from pki_util import key_pem, make_ca, rsa_key, self_signed

    from keypost.core.containers import to_pem

    key = rsa_key()
    cert = to_pem(self_signed(key, "gateway"))
    files = {
        "with-key.pem": (key_pem(key) + cert, "private key"),
        "key-after.pem": (cert + key_pem(key), "private key"),
        "chain.pem": (to_pem(make_ca("gateway CA", rsa_key())[1]) + cert, "2 PEM blocks"),
        "expired.pem": (to_pem(self_signed(key, "gateway", days=-0.01)), "expired on"),
    }
    _, usable = write_rsa(tmp_path / "usable.pem")
    for name, (content, expected) in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        for command in (["add", "keys.example"], ["rekey", "example.net"]):
            line = one_line_error("directory", "domain", *command, "--encryption-cert",
                                  str(path), "--data", str(data))
            assert expected in line, (name, line)
        line = one_line_error("directory", "domain", "add", "keys.example", "--encryption-cert",
                              str(usable), "--signing-cert", str(path), "--data", str(data))
        assert expected in line, (name, line)
    assert "keys.example" not in keypost("directory", "domain", "list", "--data",
                                         str(data)).stdout
    (tmp_path / "cert.pem").write_bytes(cert)
    keypost("directory", "domain", "add", "keys.example", "--encryption-cert",
            str(tmp_path / "cert.pem"), "--data", str(data))
    with sqlite3.connect(data / "directory.db") as db:
        stored = [bytes(r[0]) for r in db.execute("SELECT pem FROM gateway_keys")]
    assert stored and not any(b"PRIVATE" in pem for pem in stored)
    assert cert in stored


def test_account_add_refuses_what_could_never_log_in(data: Path) -> None:
    """A password longer than a login may be (MAX_PASSWORD) was hashed and stored, and
    every bind and HTTP Basic check then failed; a name with ':' cannot be sent as HTTP
    Basic credentials (RFC 7617: the first colon ends the user-id), one with control
    characters cannot be typed and broke `account list`'s tab-separated lines."""
    from keypost.directory.accounts import MAX_PASSWORD

    cases = [
        ("long", "x" * (MAX_PASSWORD + 1), "password longer than"),
        # the refusal says what is wrong with the name, not only that it is
        ("a:b", "pw", "invalid account name 'a:b': ':' is not allowed"),
        ("tab\tname", "pw", "'tab\\tname': a control or other non-printing"),
        ("bell\x07", "pw", "'bell\\x07': a control or other non-printing"),
        (" pad", "pw", "invalid account name ' pad': spaces around it"),
    ]
    for name, password, expected in cases:
        line = one_line_error("directory", "account", "add", name, "--role", "user",
                              "--domain", "example.net", "--password-stdin", "--data", str(data),
                              stdin=password + "\n")
        assert expected in line, (name, line)
    listing = keypost("directory", "account", "list", "--data", str(data)).stdout
    assert not any(name in listing for name, _, _ in cases)
    keypost("directory", "account", "add", "longest", "--role", "user", "--domain",
            "example.net", "--password-stdin", "--data", str(data),
            stdin="x" * MAX_PASSWORD + "\n")
    keypost("directory", "account", "remove", "longest", "--data", str(data))


def test_init_refuses_a_suffix_that_is_no_dn(tmp_path: Path) -> None:
    """Every entry is named mail=<address>,<suffix>: an empty suffix put DNs ending in ','
    on the wire, one that is no DN made `serve` refuse the data dir `init` had made."""
    for suffix in ("", "not a dn", "dc=a,"):
        line = one_line_error("directory", "init", "--data", str(tmp_path / "d"),
                              "--suffix", suffix)
        assert "suffix" in line and "DN" in line, (suffix, line)
        assert not (tmp_path / "d").exists()
    keypost("directory", "init", "--data", str(tmp_path / "d"))
    settings = tmp_path / "d" / "directory.toml"
    settings.write_text(settings.read_text().replace('suffix = "dc=keypost"', 'suffix = ""'))
    line = one_line_error("directory", "serve", "--data", str(tmp_path / "d"),
                          "--ldap", "127.0.0.1:0")
    assert "directory.toml: suffix" in line, line


def test_init_in_a_folder_made_beforehand_keeps_the_store_private(tmp_path: Path) -> None:
    """A folder the operator (or a package, or systemd's StateDirectory) made beforehand is
    typically 0755: the store, with every account's password hash, was then 0644."""
    data = tmp_path / "d"
    data.mkdir(mode=0o755)
    keypost("directory", "init", "--data", str(data))
    _, pub = write_rsa(tmp_path / "gw.pem")
    keypost("directory", "domain", "add", "example.com", "--encryption-cert", str(pub),
            "--data", str(data))
    keypost("directory", "account", "add", "bob", "--role", "user", "--domain", "example.com",
            "--password-stdin", "--data", str(data), stdin="pw\n")
    for name in ("directory.db", "directory.db-wal", "directory.db-shm", "ca-key.pem"):
        if (data / name).exists():
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


def test_init_refuses_a_folder_holding_a_store_or_ca(tmp_path: Path) -> None:
    """Only the settings and the CA key counted as "initialised": a store left behind (its
    accounts, and containers signed by another CA, which it would go on serving) was
    adopted by a new CA, a CA certificate overwritten."""
    old = tmp_path / "old"
    keypost("directory", "init", "--data", str(old))
    for name in ("directory.db", "ca.pem"):
        data = tmp_path / name
        data.mkdir()
        (data / name).write_bytes((old / name).read_bytes())
        line = one_line_error("directory", "init", "--data", str(data))
        assert "already" in line and name in line, line
        assert sorted(p.name for p in data.iterdir()) == [name]


def test_bad_domains_are_named_as_given(data: Path, tmp_path: Path) -> None:
    """A domain was checked as the address x@DOMAIN, and the error showed that address
    ("invalid local part: 'x@x@y.example'") instead of the domain the operator typed."""
    _, pub = write_rsa(tmp_path / "k.pem")
    for domain in ("x@y.example", " sp.example", "*.wild.example", "1.2.3.4"):
        for args in (["domain", "add", domain, "--encryption-cert", str(pub)],
                     ["domain", "remove", domain],
                     ["account", "add", "dan", "--role", "user", "--domain", domain,
                      "--password-stdin"]):
            line = one_line_error("directory", *args, "--data", str(data), stdin="pw\n")
            assert f"invalid domain {domain!r}" in line and "x@" not in line.replace(
                domain, ""), line


def test_serve_without_its_ca_key_names_the_file(tmp_path: Path) -> None:
    """It said "cannot serve: No such file or directory", naming nothing."""
    data = tmp_path / "d"
    keypost("directory", "init", "--data", str(data))
    (data / "ca-key.pem").unlink()
    line = one_line_error("directory", "serve", "--data", str(data), "--ldap", "127.0.0.1:0")
    assert str(data / "ca-key.pem") in line, line


def test_genuine_add_refuses_a_certificate_not_valid_yet(data: Path, tmp_path: Path) -> None:
    """It was handed out at once, next to the proxy container: a certificate that every
    client refuses until its notBefore."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from pki_util import name, rsa_key

    from keypost.core.containers import to_pem

    key = rsa_key()
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    cert = (x509.CertificateBuilder().subject_name(name("Fay")).issuer_name(name("Fay"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("fay@example.net")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    path = tmp_path / "fay.pem"
    path.write_bytes(to_pem(cert))
    line = one_line_error("directory", "genuine", "add", str(path), "--data", str(data))
    assert f"not valid before {start:%Y-%m-%d}" in line, line
    assert "no genuine certificate" in one_line_error(
        "directory", "genuine", "remove", "fay@example.net", "--data", str(data))


def test_init_writes_settings_it_can_read_back(tmp_path: Path) -> None:
    """A newline in --suffix went into directory.toml as it was: invalid TOML, so the data
    dir init had just made could not be served."""
    line = one_line_error("directory", "init", "--data", str(tmp_path / "d"),
                          "--suffix", "dc=a\nb")
    assert "suffix" in line and not (tmp_path / "d").exists()
    from keypost.directory.config import DataDir, Settings, load_settings, write_settings

    data = DataDir(tmp_path / "e")
    keypost("directory", "init", "--data", str(data.root))
    odd = Settings(suffix='dc=a\\"b\\,c')
    write_settings(data, odd)
    assert load_settings(data) == odd


def _ec_public(path: Path, curve: object) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    assert isinstance(curve, ec.EllipticCurve)
    path.write_bytes(ec.generate_private_key(curve).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_an_ec_encryption_key_is_registered_and_one_without_key_agreement_refused(
    data: Path, tmp_path: Path
) -> None:
    """The S/MIME engine agrees keys with EC P-256/384/521 gateway keys (ECDH): they are
    encryption keys like RSA-2048+. A P-224 key is a valid key but no S/MIME one."""
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = _ec_public(tmp_path / "p384.pub", ec.SECP384R1())
    keypost("directory", "domain", "add", "ec.example", "--encryption-cert", str(p384),
            "--data", str(data))
    assert "ec.example" in keypost("directory", "domain", "list", "--data", str(data)).stdout
    p224 = _ec_public(tmp_path / "p224.pub", ec.SECP224R1())
    line = one_line_error("directory", "domain", "add", "p224.example", "--encryption-cert",
                          str(p224), "--data", str(data))
    assert "EC P-224" in line and "P-256, P-384 or P-521" in line, line


def test_a_signing_key_on_a_curve_mail_clients_cannot_verify_is_refused(
    data: Path, tmp_path: Path
) -> None:
    """A P-224 or secp256k1 signing key was registered, and the domain's gateway signed
    mail with its containers that Thunderbird (NSS) and other mail clients cannot verify:
    they know ECDSA on P-256, P-384 and P-521 only (RFC 8551 2.2 requires P-256)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    _, enc = write_rsa(tmp_path / "enc.pem")
    for curve, shown in ((ec.SECP224R1(), "EC P-224"), (ec.SECP256K1(), "secp256k1")):
        signing = _ec_public(tmp_path / f"{curve.name}.pub", curve)
        line = one_line_error("directory", "domain", "add", "sig224.example",
                              "--encryption-cert", str(enc), "--signing-cert", str(signing),
                              "--data", str(data))
        assert shown in line and "P-256, P-384 or P-521" in line and str(signing) in line, line
    assert "sig224.example" not in keypost("directory", "domain", "list",
                                           "--data", str(data)).stdout
    p256 = _ec_public(tmp_path / "p256.pub", ec.SECP256R1())
    keypost("directory", "domain", "add", "sig256.example", "--encryption-cert", str(enc),
            "--signing-cert", str(p256), "--data", str(data))


def test_a_gateway_account_of_several_domains_is_added_listed_and_changed(
        tmp_path: Path) -> None:
    """One gateway serving several domains has one account standing for all of them;
    a user account keeps exactly one domain."""
    data = str(tmp_path / "d")
    keypost("directory", "init", "--data", data)
    _, pub = write_rsa(tmp_path / "gw.pem")
    for domain in ("example.com", "example.de", "bücher.example"):
        keypost("directory", "domain", "add", domain, "--encryption-cert", str(pub),
                "--data", data)

    def account(*args: str, stdin: str | None = None) -> str:
        return str(keypost("directory", "account", *args, "--data", data, stdin=stdin).stdout)

    def listed() -> list[str]:
        return [line.rsplit("\t", 1)[0] for line in account("list").splitlines()]

    out = account("add", "gw", "--role", "gateway", "--domain", "Example.DE", "--domain",
                  "example.com", "--password-stdin", stdin="pw\n")
    assert out == "account gw: gateway of example.com, example.de\n"
    account("add", "alice", "--role", "user", "--domain", "example.de", "--password-stdin",
            stdin="pw\n")
    assert listed() == ["alice\tuser\texample.de", "gw\tgateway\texample.com,example.de"]
    out = account("domains", "GW", "--add", "Bücher.example", "--remove", "example.com")
    assert out == "account gw: gateway of example.de, xn--bcher-kva.example\n"
    assert account("domains", "gw") == out  # none given: shows them
    assert listed()[1] == "gw\tgateway\texample.de,xn--bcher-kva.example"
    # a user account moves to another domain, never to two
    assert account("domains", "alice", "--add", "example.com", "--remove", "example.de") == (
        "account alice: user of example.com\n")
    errors = [
        (("domains", "alice", "--add", "example.de"), "a user account has exactly one domain"),
        (("domains", "gw", "--remove", "example.de", "--remove", "bücher.example"),
         "account gw would have no domain left (`account remove gw` removes it)"),
        (("domains", "gw", "--add", "nope.example"), "unknown domain nope.example"),
        (("domains", "gw", "--remove", "example.com"), "account gw does not have example.com"),
        (("domains", "gw", "--add", "example.com", "--remove", "example.com"),
         "both added and removed: example.com"),
        (("domains", "nobody"), "no account named nobody"),
        (("add", "bob", "--role", "user", "--domain", "example.com", "--domain", "example.de",
          "--password-stdin"), "a user account has exactly one domain, not 2 "
                               "(example.com, example.de); only gateway accounts may have several"),
    ]
    for args, expected in errors:
        assert expected in one_line_error("directory", "account", *args, "--data", data,
                                          stdin="pw\n"), args
    assert listed() == ["alice\tuser\texample.com", "gw\tgateway\texample.de,xn--bcher-kva.example"]
    # removing one of its domains leaves the gateway account the others
    assert keypost("directory", "domain", "remove", "example.de", "--data", data).stdout == (
        "removed example.de (0 account(s) of it removed too)\n"
        "account(s) gw keep their other domain(s)\n")
    assert listed() == ["alice\tuser\texample.com", "gw\tgateway\txn--bcher-kva.example"]


def test_a_user_account_of_two_domains_is_refused_before_the_password_is_asked(
        tmp_path: Path) -> None:
    """No terminal and no --password-stdin: the refusal names the domains, not the prompt."""
    data = tmp_path / "d"
    keypost("directory", "init", "--data", str(data))
    done = subprocess.run([*KEYPOST, "directory", "account", "add", "erin", "--role", "user",
                           "--domain", "a.example", "--domain", "b.example", "--data", str(data)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, start_new_session=True)
    assert done.returncode == 1
    assert "a user account has exactly one domain" in done.stderr, done.stderr


@pytest.mark.parametrize(("key", "extensions", "problem"), [
    ("rsa:1024", [], "RSA-1024"),
    ("ec:P-224", [], "P-224"),
    ("rsa:2048", ["keyUsage=critical,digitalSignature"], "keyEncipherment"),
    ("rsa:2048", ["extendedKeyUsage=serverAuth"], "emailProtection"),
    ("rsa:2048", ["basicConstraints=critical,CA:TRUE"], "CA certificate"),
])
def test_genuine_add_refuses_a_certificate_nobody_can_encrypt_to(
        data: Path, tmp_path: Path, key: str, extensions: list[str], problem: str) -> None:
    """It was stored and handed out to everyone as the mailbox's end-to-end certificate:
    the host skips it (its own check), other clients fail to encrypt to it or refuse the
    whole message. Certificates made by openssl req, as an operator would."""
    algorithm, _, size = key.partition(":")
    new_key = ["-newkey", f"rsa:{size}"] if algorithm == "rsa" else [
        "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{size}"]
    path = tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", *new_key, "-nodes", "-keyout",
                    str(tmp_path / "key.pem"), "-out", str(path), "-subj", "/CN=Gil",
                    "-days", "30", "-addext", "subjectAltName=email:gil@example.net",
                    *[arg for ext in extensions for arg in ("-addext", ext)]],
                   check=True, capture_output=True)
    line = one_line_error("directory", "genuine", "add", str(path), "--data", str(data))
    assert problem in line and str(path) in line, line
    assert "no genuine certificate" in one_line_error(
        "directory", "genuine", "remove", "gil@example.net", "--data", str(data))
