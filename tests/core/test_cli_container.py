"""`keypost container ...` run as a real subprocess: output, exit codes, one-line errors."""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pki_util import key_pem

from keypost.core import containers as kc
from keypost.core.types import Purpose, Role

KEYPOST = Path(sys.executable).with_name("keypost")
OPENSSL = shutil.which("openssl")


def keypost(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(KEYPOST)] if KEYPOST.exists() else [sys.executable, "-m", "keypost.core.cli"]
    return subprocess.run(
        [*cmd, "container", *map(str, args)],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_error(res: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert res.returncode == code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("keypost: ")
    return lines[0]


def public_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory CA made by `ca-new` and a gateway key pair (bare SPKI)."""
    d = tmp_path_factory.mktemp("cli")
    res = keypost("ca-new", "--out-cert", d / "ca.pem", "--out-key", d / "ca.key")
    assert res.returncode == 0, res.stderr
    gw = rsa.generate_private_key(65537, 2048)
    (d / "gw.pub").write_bytes(public_pem(gw))
    (d / "gw.key").write_bytes(key_pem(gw))
    return d


def issue(work: Path, *extra: str | Path, address: str = "alice@example.org") -> Path:
    res = keypost(
        "issue", "--ca-cert", work / "ca.pem", "--ca-key", work / "ca.key",
        "--gateway-cert", work / "gw.pub", "--address", address, *extra,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = work / f"c-{len(list(work.iterdir()))}.pem"
    out.write_text(res.stdout)
    return out


def test_ca_new(work: Path, tmp_path: Path) -> None:
    assert stat.S_IMODE((work / "ca.key").stat().st_mode) == 0o600
    (ca,) = kc.load_certificates((work / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # refuses to overwrite, unless told to
    res = keypost("ca-new", "--out-cert", work / "ca.pem", "--out-key", work / "ca.key")
    assert "exists" in assert_one_line_error(res)
    assert (work / "ca.pem").read_bytes() == kc.to_pem(ca)
    cert, key = tmp_path / "r.pem", tmp_path / "r.key"
    key.write_text("old")
    key.chmod(0o644)
    res = keypost("ca-new", "--out-cert", cert, "--out-key", key, "--key-type", "rsa-3072",
                  "--force")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = kc.DirectoryCA.load(cert.read_bytes(), key.read_bytes())
    pub = loaded.certificate.public_key()
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 3072


def test_issue_prints_pem(work: Path) -> None:
    path = issue(work, "--purpose", "sign", "--lifetime", "30m", "--directory-url",
                 "https://keys.example/", address="Bob@Example.ORG")  # fmt: skip
    (cert,) = kc.load_certificates(path.read_bytes())
    assert path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    info = kc.describe(cert)
    assert info.addresses == ("Bob@example.org",)
    assert info.role is Role.PROXY_SIGNING
    assert info.directory_url == "https://keys.example/"
    assert info.not_after - info.not_before == dt.timedelta(minutes=35)  # 30 min + 5 min skew
    (ca,) = kc.load_certificates((work / "ca.pem").read_bytes())
    assert kc.verify_container(cert, [ca], "Bob@example.org", Purpose.SIGN).ok


def test_issue_accepts_gateway_certificate(work: Path, tmp_path: Path) -> None:
    # a gateway certificate made by openssl itself, not by us
    if OPENSSL is None:
        pytest.skip("openssl not installed")
    gw_cert = tmp_path / "gw.crt"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-new", "-key", str(work / "gw.key"), "-subj", "/CN=gw",
         "-days", "2", "-out", str(gw_cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    res = keypost("issue", "--ca-cert", work / "ca.pem", "--ca-key", work / "ca.key",
                  "--gateway-cert", gw_cert, "--address", "a@b.example")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = tmp_path / "c.pem"
    out.write_text(res.stdout)
    verify = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(work / "ca.pem"), "-purpose", "smimeencrypt",
         str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    (cert,) = kc.load_certificates(out.read_bytes())
    gw = kc.GatewayKey.from_pem(gw_cert.read_bytes())
    assert kc.describe(cert).gateway_fingerprint == gw.fingerprint


def _ec_public(path: Path, curve: ec.EllipticCurve) -> Path:
    path.write_bytes(
        ec.generate_private_key(curve).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def test_issue_for_an_ec_gateway_key_off_the_agreement_curves_says_so(
    work: Path, tmp_path: Path
) -> None:
    """P-256/384/521 gateway keys are usable by the S/MIME engine (ECDH key agreement):
    issued without a note. A P-224 key is issued as asked, with a note on stderr."""
    p224 = _ec_public(tmp_path / "p224.pub", ec.SECP224R1())
    base = ["issue", "--ca-cert", work / "ca.pem", "--ca-key", work / "ca.key",
            "--address", "a@b.example"]  # fmt: skip
    res = keypost(*base, "--gateway-cert", p224)
    assert res.returncode == 0, res.stderr
    (cert,) = kc.load_certificates(res.stdout.encode())  # stdout is the PEM alone
    assert kc.describe(cert).key_description == "EC P-224"
    note = assert_one_line_error(res, 0)
    assert "EC P-224" in note and "cannot encrypt" in note and "Traceback" not in note
    # an RSA or EC P-256/384 gateway key, or a signing container, gets no note
    for extra in (["--gateway-cert", work / "gw.pub"],
                  ["--gateway-cert", _ec_public(tmp_path / "p256.pub", ec.SECP256R1())],
                  ["--gateway-cert", _ec_public(tmp_path / "p384.pub", ec.SECP384R1())],
                  ["--gateway-cert", p224, "--purpose", "sign"]):  # fmt: skip
        quiet = keypost(*base, *extra)
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_show(work: Path) -> None:
    path = issue(work, "--lifetime", "2h", address="jörg@bücher.example")
    res = keypost("show", path)
    assert res.returncode == 0, res.stderr
    gw = kc.GatewayKey.from_pem((work / "gw.pub").read_bytes())
    out = res.stdout
    assert "jörg@bücher.example" in out
    assert "proxy-encryption" in out
    assert gw.fingerprint in out
    assert "aes256-cbc, aes128-cbc" in out
    assert "RSA-2048" in out
    assert "1 h 59 min left" in out or "2 h left" in out
    # stdin and a CA certificate (not a container) work too
    res = keypost("show", "-", stdin=(work / "ca.pem").read_bytes())
    assert res.returncode == 0 and "not a keypost container" in res.stdout


def test_verify(work: Path) -> None:
    path = issue(work)
    ok = keypost("verify", "--trust-anchor", work / "ca.pem", "--address", "alice@EXAMPLE.org",
                 "--purpose", "encrypt", path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK")
    bad = keypost("verify", "--trust-anchor", work / "ca.pem", "--address", "bob@example.org",
                  "--purpose", "sign", path)  # fmt: skip
    line = assert_one_line_error(bad)
    assert "not for bob@example.org" in line and "digitalSignature" in line
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat()
    expired = keypost("verify", "--trust-anchor", work / "ca.pem", "--address",
                      "alice@example.org", "--purpose", "encrypt", "--at", later, path)  # fmt: skip
    assert "expired" in assert_one_line_error(expired)


def test_verify_refuses_a_file_of_several_certificates(work: Path, tmp_path: Path) -> None:
    """Which one would be checked is not up to the user: a PKCS#7 bundle is DER-sorted."""
    bundle = tmp_path / "two.pem"
    bundle.write_bytes(issue(work).read_bytes() + (work / "ca.pem").read_bytes())
    res = keypost("verify", "--trust-anchor", work / "ca.pem", "--address", "alice@example.org",
                  "--purpose", "encrypt", bundle)  # fmt: skip
    assert "holds 2 certificates" in assert_one_line_error(res)


def test_verify_wrong_anchor(work: Path, tmp_path: Path) -> None:
    other = kc.DirectoryCA.generate(common_name="other CA")
    (tmp_path / "other.pem").write_bytes(kc.to_pem(other.certificate))
    res = keypost("verify", "--trust-anchor", tmp_path / "other.pem", "--address",
                  "alice@example.org", "--purpose", "encrypt", issue(work))  # fmt: skip
    assert "not issued by a trusted directory CA" in assert_one_line_error(res)


def test_bad_input_is_one_line(work: Path, tmp_path: Path) -> None:
    (tmp_path / "weak.pub").write_bytes(public_pem(rsa.generate_private_key(65537, 1024)))
    (tmp_path / "ed.pub").write_bytes(public_pem(ed25519.Ed25519PrivateKey.generate()))
    (tmp_path / "junk").write_bytes(b"\x00\x01junk")
    base: list[str | Path] = ["issue", "--ca-cert", work / "ca.pem", "--ca-key", work / "ca.key"]
    cases: list[tuple[list[str | Path], str]] = [
        ([*base, "--gateway-cert", tmp_path / "missing.pem", "--address", "a@b.example"],
         "cannot read"),
        ([*base, "--gateway-cert", work / "gw.key", "--address", "a@b.example"], "private key"),
        ([*base, "--gateway-cert", tmp_path / "weak.pub", "--address", "a@b.example"],
         "RSA-1024"),
        ([*base, "--gateway-cert", tmp_path / "ed.pub", "--address", "a@b.example"],
         "not accepted"),
        ([*base, "--gateway-cert", tmp_path / "junk", "--address", "a@b.example"], "unreadable"),
        ([*base, "--gateway-cert", work / "gw.pub", "--address", "not an address"], "invalid"),
        ([*base, "--gateway-cert", work / "gw.pub", "--address", "a@b.example", "--lifetime",
          "25h"], "lifetime"),
        ([*base, "--gateway-cert", work / "gw.pub", "--address", "a@b.example", "--lifetime",
          "soon"], "invalid lifetime"),
        (["issue", "--ca-cert", work / "ca.pem", "--ca-key", work / "gw.key", "--gateway-cert",
          work / "gw.pub", "--address", "a@b.example"], "does not belong"),
        (["issue", "--ca-cert", work / "gw.pub", "--ca-key", work / "ca.key", "--gateway-cert",
          work / "gw.pub", "--address", "a@b.example"], "unreadable directory CA certificate"),
        (["ca-new", "--out-cert", tmp_path / "c.pem", "--out-key", tmp_path / "c.key",
          "--validity-days", "99999999"], "CA validity"),
        (["ca-new", "--out-cert", tmp_path / "c.pem", "--out-key", tmp_path / "c.key",
          "--validity-days", "0"], "CA validity"),
        (["show", tmp_path / "junk"], "no readable certificate"),
        (["show", work / "ca.key"], "no certificate"),
        (["show", tmp_path], "cannot read"),
        (["verify", "--trust-anchor", tmp_path / "junk", "--address", "a@b.example",
          "--purpose", "encrypt", work / "ca.pem"], "no readable certificate"),
        (["verify", "--trust-anchor", work / "ca.pem", "--address", "a@b.example",
          "--purpose", "encrypt", "--at", "yesterday", work / "ca.pem"], "invalid time"),
    ]  # fmt: skip
    for args, needle in cases:
        line = assert_one_line_error(keypost(*args))
        assert needle in line, (args, line)
        assert "PRIVATE KEY" not in line


def test_usage_errors_exit_2_without_traceback(work: Path) -> None:
    for args in (["issue"], ["verify", "--purpose", "both", "x"], ["frobnicate"]):
        res = keypost(*args)
        assert res.returncode == 2
        assert "Traceback" not in res.stderr and "usage:" not in res.stderr
        # one line, naming the subcommand and where its help is
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("keypost: error: keypost")
        assert "--help" in res.stderr


@pytest.mark.parametrize("days", ["0", "-3", "36601", "99999999999999"])
def test_ca_validity_is_refused_in_days_as_typed(tmp_path: Path, days: str) -> None:
    res = keypost("ca-new", "--out-cert", tmp_path / "c.pem", "--out-key", tmp_path / "c.key",
                  "--validity-days", days)  # fmt: skip
    line = assert_one_line_error(res)
    assert f"CA validity of {days} days is outside 1 .. 36600 days" in line
    assert not (tmp_path / "c.key").exists()


def test_issue_refuses_a_directory_url_no_client_could_use(work: Path) -> None:
    for url in ("not a url", "keys.example.org", "ftp://keys.example.org/", "ldap://"):
        res = keypost(
            "issue", "--ca-cert", work / "ca.pem", "--ca-key", work / "ca.key",
            "--gateway-cert", work / "gw.pub", "--address", "a@b.example", "--directory-url", url,
        )  # fmt: skip
        assert "invalid directory URL" in assert_one_line_error(res), url
        assert res.stdout == ""


def test_a_reader_leaving_the_pipe_is_no_error(work: Path, tmp_path: Path) -> None:
    """`keypost container show FILE | head -1`: the reader closes the pipe after a line;
    keypost stops quietly (no "cannot access: Broken pipe", no traceback), exit 1 as
    Python's own for EPIPE. The output (~300 KB) outgrows the pipe buffer, so the write
    after the close really happens."""
    bundle = tmp_path / "many.pem"
    bundle.write_bytes(issue(work).read_bytes() * 500)
    cmd = [str(KEYPOST)] if KEYPOST.exists() else [sys.executable, "-m", "keypost.core.cli"]
    proc = subprocess.Popen([*cmd, "container", "show", str(bundle)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert first == f"{bundle} [1/500]:\n".encode()
    assert err == b""


def test_show_a_certificate_with_serial_zero_prints_no_library_warning(work: Path) -> None:
    """`openssl req -set_serial 0` makes one; cryptography warns about it over several
    stderr lines, which broke the commands' one-line output."""
    cert, key = work / "zero.pem", work / "zero.key"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                           str(key), "-out", str(cert), "-subj", "/CN=zero", "-days", "2",
                           "-set_serial", "0"], capture_output=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    res = keypost("show", cert)
    assert res.returncode == 0 and "serial:       0" in res.stdout, res.stdout
    assert res.stderr == "", res.stderr
