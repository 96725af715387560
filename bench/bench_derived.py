"""What per-address derived keys cost (keypost.core.derived), per curve: the directory's
public derivation P_A = P + t_A*G, the gateway's d_A = d + t_A, and a whole encryption
container issued with and without derived keys (DirectoryCA.issue, ECDSA P-256 CA), the
derived one for new addresses and again for the same ones (another requestor's container:
P_A is kept per address). Milliseconds per call, one core, fresh addresses per column.

    python bench/bench_derived.py [--count 300]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec

from keypost.core import derived
from keypost.core.address import Address, parse_address
from keypost.core.containers import ContainerRequest, DirectoryCA, GatewayKey
from keypost.core.types import Purpose

CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


def per_call_ms(fn: Callable[[Address], object], addresses: list[Address]) -> float:
    start = time.perf_counter()
    for a in addresses:
        fn(a)
    return (time.perf_counter() - start) / len(addresses) * 1e3


def row(ca: DirectoryCA, curve: ec.EllipticCurve, count: int) -> tuple[float, ...]:
    key = ec.generate_private_key(curve)
    public = key.public_key()
    plain, with_derived = GatewayKey(public), GatewayKey(public, derived=True)
    # fresh addresses per column: nothing cached between the measurements
    rows = [[parse_address(f"u{i}.{n}@bench.example") for i in range(count)] for n in range(4)]

    def issue(gateway: GatewayKey) -> Callable[[Address], object]:
        return lambda a: ca.issue(ContainerRequest(a, Purpose.ENCRYPT, gateway))

    return (
        per_call_ms(lambda a: derived.derived_public_key(public, a), rows[0]),
        per_call_ms(lambda a: derived.derived_private_key(key, a), rows[1]),
        per_call_ms(issue(plain), rows[2]),
        per_call_ms(issue(with_derived), rows[3]),
        # the same addresses again (another requestor): P_A is kept per address
        per_call_ms(issue(with_derived), rows[3]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="addresses per measurement")
    args = parser.parse_args()
    ca = DirectoryCA.generate()
    print(f"{'curve':6} {'P_A':>7} {'d_A':>7} {'issue plain':>12} {'issue derived':>14}"
          f" {'derived again':>14}")
    for name, curve in CURVES.items():
        pub, priv, plain, new, again = row(ca, curve, args.count)
        print(f"{name:6} {pub:7.3f} {priv:7.3f} {plain:12.3f} {new:14.3f} {again:14.3f}")


if __name__ == "__main__":
    main()
