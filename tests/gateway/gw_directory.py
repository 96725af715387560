"""A real `keypost directory serve` for the gateway tests (D's CLI, driven like a stranger).

Serves example.com (the gateway under test: its keys come from the Pki) and partner.org
(another gateway), keeps genuine certificates for bob@partner.org, carol@elsewhere.net and
gina@example.com (a mailbox of the gateway's own domain; hers has a subjectKeyIdentifier)
issued by a test CA, and has the accounts gw-example (gateway of example.com) and alice
(a user of example.com).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from gw_support import KEYPOST, Pki, pub_pem, write_private
from pki_util import email_cert, key_pem, make_ca, rsa_key, server_cert
from proc_util import port_of, start_directory_serve, stop

from keypost.core.containers import to_pem

GATEWAY_ACCOUNT, GATEWAY_PW = "gw-example", "gateway-pw-1"
USER_ACCOUNT, USER_PW = "alice", "alice-pw-1"


def keypost(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run([*KEYPOST, *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"keypost {' '.join(args)}: {done.stderr}")
    return done.stdout


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
    gina_key: rsa.RSAPrivateKey  # gina@example.com's own key (genuine certificate)
    proc: subprocess.Popen[str]

    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    def gateway_directory_lines(self, url: str | None = None, tls_ca: bool = True,
                                username: str = GATEWAY_ACCOUNT,
                                password_file: Path | None = None) -> str:
        return (
            (f'tls_ca = "{self.tls_ca_pem}"\n' if tls_ca else "")
            + f'url = "{url or self.ldap_url}"\n'
            f'username = "{username}"\n'
            f'password_file = "{password_file or self.gateway_pw_file}"\n'
            f'trust_anchor = "{self.ca_pem}"\n'
            f'genuine_roots = ["{self.genuine_ca_pem}"]\n'
        )

    def stop(self) -> None:
        stop(self.proc, timeout=20)

    @property
    def ports(self) -> dict[str, int]:
        return {"ldap": self.ldap_port, "http": self.http_port, "ldaps": self.ldaps_port,
                "https": self.https_port}

    def restart(self) -> None:
        """`directory serve` again, after stop(), on the same ports (every client's
        configuration names them)."""
        self.proc = _serve(self.root, self.ports)[0]


def _serve(root: Path, ports: dict[str, int] | None = None,
           ) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """`directory serve` of root/data with the TLS listeners, on `ports` (else ones the
    kernel picks). -> (process, {scheme: port})."""
    proc, urls = start_directory_serve(root / "data", root / "serve.log", "--tls-cert",
                                       str(root / "tls.pem"), "--tls-key", str(root / "tls.key"),
                                       ports=ports)
    return proc, {scheme: port_of(url) for scheme, url in urls.items()}


def start_directory(root: Path, pki: Pki) -> DirectoryWorld:
    data = root / "data"
    keypost("directory", "init", "--data", str(data))
    partner = rsa_key()
    (root / "partner.pub").write_bytes(pub_pem(partner))
    keypost("directory", "domain", "add", "example.com", "--data", str(data),
            "--encryption-cert", str(pki.path("enc-current.pub")),
            "--signing-cert", str(pki.path("sign.pub")))
    keypost("directory", "domain", "add", "partner.org", "--data", str(data),
            "--encryption-cert", str(root / "partner.pub"))
    ca = make_ca("Genuine Test CA", rsa_key())
    (root / "genuine-ca.pem").write_bytes(to_pem(ca[1]))
    keys = {}
    for who in ("bob@partner.org", "carol@elsewhere.net", "gina@example.com"):
        key, cert = email_cert(ca, who, ski=who == "gina@example.com")
        keys[who] = key
        path = root / f"{who}.pem"
        path.write_bytes(to_pem(cert))
        keypost("directory", "genuine", "add", str(path), "--data", str(data))
    keypost("directory", "account", "add", GATEWAY_ACCOUNT, "--role", "gateway",
            "--domain", "example.com", "--password-stdin", "--data", str(data),
            stdin=GATEWAY_PW + "\n")
    keypost("directory", "account", "add", USER_ACCOUNT, "--role", "user",
            "--domain", "example.com", "--password-stdin", "--data", str(data),
            stdin=USER_PW + "\n")
    anchor = keypost("directory", "ca", "export", "--data", str(data))
    (root / "directory-ca.pem").write_text(anchor)
    pw = write_private(root / "gw.pass", GATEWAY_PW.encode() + b"\n")
    tls_key, tls_cert = server_cert(ca, key=rsa_key())  # the genuine test CA doubles as TLS CA
    write_private(root / "tls.key", key_pem(tls_key))
    (root / "tls.pem").write_bytes(to_pem(tls_cert))
    proc, ports = _serve(root)
    ldap, http, ldaps, https = (ports[s] for s in ("ldap", "http", "ldaps", "https"))
    return DirectoryWorld(root, ldap, http, ldaps, https,
                          root / "genuine-ca.pem",
                          root / "directory-ca.pem",
                          root / "genuine-ca.pem", pw, partner,
                          keys["bob@partner.org"], keys["carol@elsewhere.net"],
                          keys["gina@example.com"], proc)
