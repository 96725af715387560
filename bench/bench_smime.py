"""S/MIME engine throughput vs raw AES-256-CBC over the same bytes, measured in one run.

Usage: python bench/bench_smime.py [--quick] [--lines] [--key rsa-2048|ec-p256|ec-p384|ec-p521]

For 100 KB and 10 MB bodies it times encrypt (envelope for one container, RSA-2048 by
default, DER + base64 in 76-column lines) and decrypt as a gateway (RSA key transport or,
with an EC key, ECDH key agreement; AES-256-CBC, uniform-failure checks), at two levels:
the CMS DER (envelope_der / decrypt_der) and whole messages (encrypt_message /
decrypt_message, incl. base64 and MIME). cryptography's PKCS7EnvelopeBuilder over the
same entity is timed too, for reference (the engine used it before it wrote
EnvelopedData itself; RSA only, so not with --key ec-*). The anchor is cryptography's
AES-256-CBC alone over the same bytes. Each row alternates engine and anchor runs; the
ratio is the median of anchor time / engine time (1.0 = as fast as the bare cipher; goal
>= 0.7).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7

from keypost.core import smime
from keypost.core.address import parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey
from keypost.core.mime import BASE64_BACKEND, b64_decode, b64_lines, split_entity
from keypost.core.types import Purpose


def compare(
    engine: Callable[[], object], anchor: Callable[[], object], rounds: int
) -> tuple[float, float, float]:
    """Alternate engine and anchor runs; -> (median engine s, median anchor s, median of
    the per-round ratios anchor/engine). Alternating keeps both sides under the same load
    on the shared machine; medians ignore the rounds another process disturbed."""
    engine_times: list[float] = []
    anchor_times: list[float] = []
    ratios: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        anchor()
        mid = time.perf_counter()
        engine()
        end = time.perf_counter()
        anchor_times.append(mid - start)
        engine_times.append(end - mid)
        ratios.append((mid - start) / (end - mid))
    return (
        statistics.median(engine_times),
        statistics.median(anchor_times),
        statistics.median(ratios),
    )


KEYS: dict[str, Callable[[], rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]] = {
    "rsa-2048": partial(rsa.generate_private_key, public_exponent=65537, key_size=2048),
    "ec-p256": partial(ec.generate_private_key, ec.SECP256R1()),
    "ec-p384": partial(ec.generate_private_key, ec.SECP384R1()),
    "ec-p521": partial(ec.generate_private_key, ec.SECP521R1()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--lines",
        action="store_true",
        help="body of 76-column CRLF lines (like a base64 attachment) instead of one long line",
    )
    parser.add_argument("--key", choices=sorted(KEYS), default="rsa-2048",
                        help="the container's (gateway's) key: RSA key transport or ECDH")
    args = parser.parse_args()

    ca = DirectoryCA.generate()
    key = KEYS[args.key]()
    container = ca.issue(
        ContainerRequest(
            parse_address("bob@b.example"), Purpose.ENCRYPT, GatewayKey(key.public_key())
        )
    )
    decryptor = smime.Decryptor([key])
    recips = [container]
    aes_key, iv = os.urandom(32), os.urandom(16)

    shape = "76-column CRLF lines" if args.lines else "one line"
    print(f"base64 backend: {BASE64_BACKEND}; AES = cryptography AES-256-CBC, same bytes")
    print(f"container key: {args.key}; body: {shape}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'body':>6} {'operation':<32} {'engine ms':>10} {'AES ms':>8} {'ratio':>6}")
    for label, size, repeat in (("100 KB", 100_000, 300), ("10 MB", 10_000_000, 21)):
        if args.quick:
            repeat = max(2, repeat // 4)
        if args.lines:  # every line end is looked at by the canonical-CRLF checks
            body = b64_lines(os.urandom(size * 3 // 4))[:size]
        else:
            body = os.urandom(size * 3 // 4).hex().encode()[:size]  # text-like, no line ends
        entity = b"Content-Type: application/octet-stream\r\n\r\n" + body
        message = b"From: a@a.example\r\nTo: bob@b.example\r\nSubject: bench\r\n" + entity
        padded = entity + bytes([16 - len(entity) % 16]) * (16 - len(entity) % 16)

        def aes_encrypt(data: bytes = padded) -> bytes:
            enc = Cipher(algorithms.AES256(aes_key), modes.CBC(iv)).encryptor()
            return enc.update(data) + enc.finalize()

        ciphertext = aes_encrypt()

        def aes_decrypt(data: bytes = ciphertext) -> bytes:
            dec = Cipher(algorithms.AES256(aes_key), modes.CBC(iv)).decryptor()
            return dec.update(data) + dec.finalize()

        def builder_der(data: bytes = entity) -> bytes:
            builder = pkcs7.PKCS7EnvelopeBuilder().set_data(data).add_recipient(container)
            builder = builder.set_content_encryption_algorithm(algorithms.AES256)
            return builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])

        envelope_der = partial(smime.envelope_der, entity, recips)
        encrypted = smime.encrypt_message(message, [container])
        der = b64_decode(split_entity(encrypted)[1])
        assert decryptor.decrypt_message(encrypted).message.endswith(body)

        rows: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            ("encrypt: CMS DER (envelope_der)", envelope_der, aes_encrypt),
            ("  ref: PKCS7EnvelopeBuilder", builder_der, aes_encrypt),
            ("encrypt_entity", partial(smime.encrypt_entity, entity, recips), aes_encrypt),
            ("encrypt_message", partial(smime.encrypt_message, message, recips), aes_encrypt),
            ("decrypt_der", partial(decryptor.decrypt_der, der), aes_decrypt),
            ("decrypt_message", partial(decryptor.decrypt_message, encrypted), aes_decrypt),
        ]  # fmt: skip
        if isinstance(key, ec.EllipticCurvePrivateKey):  # the builder is RSA only
            rows = [row for row in rows if row[1] is not builder_der]
        for name, engine_fn, anchor_fn in rows:
            engine, anchor, ratio = compare(engine_fn, anchor_fn, repeat)
            print(
                f"{label:>6} {name:<32} {engine * 1e3:>10.2f} {anchor * 1e3:>8.2f} {ratio:>5.2f}x"
            )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
