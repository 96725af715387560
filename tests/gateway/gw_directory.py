"""A real `keypost directory serve` for the gateway tests (D's CLI, driven like a stranger).

Serves example.com (the gateway under test: its keys come from the Pki) and partner.org
(another gateway), keeps genuine certificates for bob@partner.org and carol@elsewhere.net
issued by a test CA, and has the accounts gw-example (gateway of example.com) and alice
(a user of example.com).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gw_support import KEYPOST, Pki, free_port, pub_pem, wait_port, write_private
from proc_util import stop

GATEWAY_ACCOUNT, GATEWAY_PW = "gw-example", "gateway-pw-1"
USER_ACCOUNT, USER_PW = "alice", "alice-pw-1"


def keypost(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run([*KEYPOST, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"keypost {' '.join(args)}: {done.stderr}")
    return done.stdout


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_genuine_ca() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Genuine Test CA")).issuer_name(_name("Genuine Test CA"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_genuine(ca_key: rsa.RSAPrivateKey, ca: x509.Certificate, address: str
                 ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address),
                                 x509.NameAttribute(NameOID.EMAIL_ADDRESS, address)]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                       critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_tls_cert(ca_key: rsa.RSAPrivateKey, ca: x509.Certificate
                  ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A server certificate for 127.0.0.1 from the test CA (for LDAPS)."""
    key = rsa.generate_private_key(65537, 2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1")).issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@dataclass
class DirectoryWorld:
    root: Path
    ldap_port: int
    http_port: int
    ldaps_port: int
    https_port: int
    tls_ca_pem: Path  # the CA of the directory's LDAPS certificate
    ca_pem: Path  # the directory CA (trust anchor)
    genuine_ca_pem: Path
    gateway_pw_file: Path
    partner_key: rsa.RSAPrivateKey  # partner.org's gateway key
    bob_key: rsa.RSAPrivateKey  # bob@partner.org's own key (genuine certificate)
    carol_key: rsa.RSAPrivateKey  # carol@elsewhere.net's own key (genuine certificate)
    proc: subprocess.Popen[bytes]

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    def gateway_directory_lines(self, url: str | None = None, tls_ca: bool = True) -> str:
        return (
            (f'tls_ca = "{self.tls_ca_pem}"\n' if tls_ca else "")
            + f'url = "{url or self.ldap_url}"\n'
            f'username = "{GATEWAY_ACCOUNT}"\n'
            f'password_file = "{self.gateway_pw_file}"\n'
            f'trust_anchor = "{self.ca_pem}"\n'
            f'genuine_roots = ["{self.genuine_ca_pem}"]\n'
        )

    def stop(self) -> None:
        stop(self.proc, timeout=20)


def start_directory(root: Path, pki: Pki) -> DirectoryWorld:
    data = root / "data"
    keypost("directory", "init", "--data", str(data))
    partner = rsa.generate_private_key(65537, 2048)
    (root / "partner.pub").write_bytes(pub_pem(partner))
    keypost("directory", "domain", "add", "example.com", "--data", str(data),
            "--encryption-cert", str(pki.path("enc-current.pub")),
            "--signing-cert", str(pki.path("sign.pub")))
    keypost("directory", "domain", "add", "partner.org", "--data", str(data),
            "--encryption-cert", str(root / "partner.pub"))
    ca_key, ca = make_genuine_ca()
    (root / "genuine-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keys = {}
    for who in ("bob@partner.org", "carol@elsewhere.net"):
        key, cert = make_genuine(ca_key, ca, who)
        keys[who] = key
        path = root / f"{who}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keypost("directory", "genuine", "add", str(path), "--data", str(data))
    keypost("directory", "account", "add", GATEWAY_ACCOUNT, "--role", "gateway",
            "--domain", "example.com", "--password-stdin", "--data", str(data),
            stdin=GATEWAY_PW + "\n")
    keypost("directory", "account", "add", USER_ACCOUNT, "--role", "user",
            "--domain", "example.com", "--password-stdin", "--data", str(data),
            stdin=USER_PW + "\n")
    export = keypost("directory", "ca", "export", "--data", str(data))
    pem = export[export.index("-----BEGIN") : export.index("-----END CERTIFICATE-----") + 25]
    (root / "directory-ca.pem").write_text(pem + "\n")
    pw = write_private(root / "gw.pass", GATEWAY_PW.encode() + b"\n")
    tls_key, tls_cert = make_tls_cert(ca_key, ca)  # the genuine test CA doubles as TLS CA
    write_private(root / "tls.key", tls_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (root / "tls.pem").write_bytes(tls_cert.public_bytes(serialization.Encoding.PEM))
    ldap_port, http_port, ldaps_port, https_port = (free_port() for _ in range(4))
    proc = subprocess.Popen(
        [*KEYPOST, "directory", "serve", "--data", str(data),
         "--ldap", f"127.0.0.1:{ldap_port}", "--http", f"127.0.0.1:{http_port}",
         "--ldaps", f"127.0.0.1:{ldaps_port}", "--https", f"127.0.0.1:{https_port}",
         "--tls-cert", str(root / "tls.pem"),
         "--tls-key", str(root / "tls.key")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    world = DirectoryWorld(root, ldap_port, http_port, ldaps_port, https_port,
                           root / "genuine-ca.pem",
                           root / "directory-ca.pem",
                           root / "genuine-ca.pem", pw, partner,
                           keys["bob@partner.org"], keys["carol@elsewhere.net"], proc)
    try:
        wait_port(ldap_port)
        wait_port(http_port)
        wait_port(ldaps_port)
        wait_port(https_port)
    except TimeoutError:
        world.stop()
        raise
    return world
