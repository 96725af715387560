"""The container extensions' tiny DER codec, checked against pyasn1 as an independent codec."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import univ

from keypost.core.errors import ContainerError
from keypost.core.types import Capability, Role
from keypost.core.x509_ext import (
    KeypostExtension,
    decode_oid,
    decode_smime_capabilities,
    der_oid,
    der_read,
    der_tlv,
    encode_smime_capabilities,
)

oids = st.tuples(
    st.integers(0, 2), st.integers(0, 39), st.lists(st.integers(0, 2**130), max_size=8)
).map(lambda t: ".".join(str(a) for a in (t[0], t[1], *t[2])))


@given(oids)
def test_oid_matches_pyasn1(dotted: str) -> None:
    ours = der_oid(dotted)
    assert ours == der_encoder.encode(univ.ObjectIdentifier(dotted))
    tag, content, end = der_read(ours)
    assert (tag, end) == (0x06, len(ours))
    assert decode_oid(content) == dotted


@given(st.binary(max_size=70000))
def test_tlv_length_forms_match_pyasn1(content: bytes) -> None:
    ours = der_tlv(0x04, content)
    assert ours == der_encoder.encode(univ.OctetString(content))
    assert der_read(ours) == (0x04, content, len(ours))


@given(
    st.sampled_from(list(Role)),
    st.binary(min_size=32, max_size=32),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=300),
)
def test_keypost_extension_roundtrip(role: Role, digest: bytes, url: str) -> None:
    ext = KeypostExtension(role, digest, url)
    assert KeypostExtension.decode(ext.encode()) == ext


@given(st.lists(st.sampled_from(list(Capability)), unique=True))
def test_capabilities_roundtrip(caps: list[Capability]) -> None:
    assert decode_smime_capabilities(encode_smime_capabilities(caps)) == tuple(caps)


def test_unknown_capabilities_are_skipped() -> None:
    des3 = der_tlv(0x30, der_oid("1.2.840.113549.3.7"))
    aes128 = der_tlv(0x30, der_oid("2.16.840.1.101.3.4.1.2") + b"\x05\x00")
    assert decode_smime_capabilities(der_tlv(0x30, des3 + aes128)) == (Capability.AES128_CBC,)


@given(st.binary(max_size=80))
def test_hostile_bytes_raise_only_container_error(data: bytes) -> None:
    for decode in (KeypostExtension.decode, decode_smime_capabilities):
        with contextlib.suppress(ContainerError):
            decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x05\x0a\x01",
        b"\x30\x84\xff\xff\xff\xff",
        der_tlv(0x30, der_tlv(0x0A, b"\x07") + der_tlv(0x04, bytes(32)) + der_tlv(0x16, b"")),
        der_tlv(0x30, der_tlv(0x0A, b"\x00") + der_tlv(0x04, bytes(20)) + der_tlv(0x16, b"")),
        der_tlv(0x30, der_tlv(0x0A, b"\x00") + der_tlv(0x04, bytes(32)) + der_tlv(0x16, b"\xff")),
        der_tlv(0x30, der_tlv(0x0A, b"\x00") + der_tlv(0x04, bytes(32))),
        der_tlv(0x30, der_tlv(0x0A, b"\x00") + der_tlv(0x04, bytes(32)) + der_tlv(0x16, b""))
        + b"x",
    ],
)
def test_malformed_keypost_extension(data: bytes) -> None:
    with pytest.raises(ContainerError):
        KeypostExtension.decode(data)


def test_encode_refuses_bad_values() -> None:
    with pytest.raises(ContainerError):
        KeypostExtension(Role.GENUINE, bytes(20), "").encode()
    with pytest.raises(ContainerError):
        KeypostExtension(Role.GENUINE, bytes(32), "https://bücher.example/").encode()
