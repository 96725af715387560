"""Writes the static malformed-message corpus in tests/data/malformed/ (run once; committed).

File names say what must happen: `reject-*` must be refused (5xx), `pass-*` must reach
the next hop byte for byte (the gateway has no business with them). Corpus entries that
need real keys (truncated CMS, wrong key, corrupted ciphertext) are made by the test.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "data" / "malformed"
HEAD = (
    b"From: mallory@outside.test\r\nTo: alice@example.com\r\nSubject: corpus\r\n"
    b"Message-ID: <corpus@outside.test>\r\nMIME-Version: 1.0\r\n"
)
P7M = (
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=smime.p7m\r\n"
)


def b64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\r\n"


def corpus() -> dict[str, bytes]:
    rnd = random.Random(5)
    noise = bytes(rnd.getrandbits(8) for _ in range(3000))
    return {
        "reject-pkcs7-garbage-base64.eml": HEAD + P7M + b"\r\n!!!! this is not base64 @@@@\r\n",
        "reject-pkcs7-random-der.eml": HEAD + P7M + b"\r\n" + b64(noise),
        "reject-pkcs7-empty-body.eml": HEAD + P7M + b"\r\n",
        "reject-pkcs7-truncated-sequence.eml": HEAD + P7M + b"\r\n"
        + b64(bytes.fromhex("308210000609") + noise[:40]),
        "reject-pkcs7-wrong-content-type-oid.eml": HEAD + P7M + b"\r\n"
        + b64(bytes.fromhex("3011060b2a864886f70d0109100117a0020500")),
        "pass-multipart-missing-boundary.eml": HEAD
        + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\npart\r\n--x--\r\n",
        "pass-multipart-never-closed.eml": HEAD
        + b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain"
        b"\r\n\r\nno closing delimiter\r\n",
        "pass-huge-headers.eml": HEAD
        + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 60) for i in range(1000))
        + b"X-Folded: " + b"\r\n\t".join([b"z" * 70] * 300) + b"\r\n"
        + b"\r\nbody after 100 KB of headers\r\n",
        "pass-non-utf8.eml": HEAD.replace(b"Subject: corpus", b"Subject: caf\xe9 \xff\xfe")
        + b"Content-Type: text/plain\r\n\r\nLatin-1 \xe9\xe8 and invalid \xc3\x28 bytes\r\n",
        "pass-no-headers.eml": b"just a line of text\r\nand another\r\n",
        "pass-nul-and-binary.eml": HEAD + b"\r\n" + noise[:500].replace(b"\r", b"").replace(
            b"\n", b"") + b"\r\n",
        "pass-signed-data-garbage.eml": HEAD
        + b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(noise[:300]),
    }


if __name__ == "__main__":
    CORPUS.mkdir(parents=True, exist_ok=True)
    for name, data in corpus().items():
        (CORPUS / name).write_bytes(data)
        print(name, len(data))
