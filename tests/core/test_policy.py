"""The seed's decision table (policy.decide) as a table: one row per situation in the issue."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from keypost.core.address import parse_address
from keypost.core.policy import ContainerSpec, DirectoryView, decide
from keypost.core.types import ContainerFormat, Purpose, Requestor, RequestorKind, Role

ENC, SIGN = Purpose.ENCRYPT, Purpose.SIGN
PE, PS, GEN = Role.PROXY_ENCRYPTION, Role.PROXY_SIGNING, Role.GENUINE

VIEW = DirectoryView(
    served_domains=frozenset({"a.example", "b.example", "xn--bcher-kva.example"}),
    genuine_addresses=frozenset({"carol@b.example", "dave@elsewhere.example", "ann@a.example"}),
    signing_domains=frozenset({"a.example"}),
)
ANON = Requestor.anonymous()


def user(domain: str) -> Requestor:
    return Requestor.user(domain)


def gateway(*domains: str) -> Requestor:
    return Requestor.gateway(*domains)


# One gateway account standing for a.example and b.example (keys of their own each).
BOTH = gateway("a.example", "b.example")


@dataclass(frozen=True)
class Case:
    name: str
    requestor: Requestor
    address: str
    purpose: Purpose
    expected: tuple[tuple[Role, str | None], ...]  # (role, gateway domain) in path order
    refused: str | None = None  # a word the refusal must contain
    note: str | None = None  # a word the note must contain


CASES = [
    # Fig. 1: an outsider writes to a served domain -> that domain's gateway.
    Case("external sender -> served domain", ANON, "bob@b.example", ENC, ((PE, "b.example"),)),
    # Fig. 2: a user of D writes out -> D's own gateway (it scans and re-encrypts).
    Case(
        "user of D -> external address",
        user("a.example"),
        "x@nobody.example",
        ENC,
        ((PE, "a.example"),),
    ),
    # Fig. 3: the gateway of D signs for its own senders.
    Case(
        "gateway of D -> sender of D (sign)",
        gateway("a.example"),
        "ann@a.example",
        SIGN,
        ((PS, "a.example"),),
    ),
    Case(
        "gateway of D -> sender of another domain (sign)",
        gateway("a.example"),
        "bob@b.example",
        SIGN,
        (),
        refused="cannot sign",
    ),
    Case(
        "gateway of served D without a signing key (sign)",
        gateway("b.example"),
        "bob@b.example",
        SIGN,
        (),
        refused="no signing key",
    ),
    Case(
        "user asks for a signing container",
        user("a.example"),
        "ann@a.example",
        SIGN,
        (),
        refused="only to the sender's gateway",
    ),
    Case(
        "outsider asks for a signing container",
        ANON,
        "ann@a.example",
        SIGN,
        (),
        refused="only to the sender's gateway",
    ),
    # A genuine certificate the directory holds is added with role genuine.
    Case("genuine known, domain not served", ANON, "dave@elsewhere.example", ENC, ((GEN, None),)),
    Case(
        "genuine known, matched case-insensitively",
        ANON,
        "DAVE@Elsewhere.Example",
        ENC,
        ((GEN, None),),
    ),
    Case(
        "external sender -> served domain with genuine",
        ANON,
        "carol@b.example",
        ENC,
        ((PE, "b.example"), (GEN, None)),
    ),
    # The whole path: A's gateway, B's gateway, the recipient's own certificate.
    Case(
        "user of A -> served B, genuine known",
        user("a.example"),
        "carol@b.example",
        ENC,
        ((PE, "a.example"), (PE, "b.example"), (GEN, None)),
    ),
    Case(
        "user of A -> served B, no genuine",
        user("a.example"),
        "bob@b.example",
        ENC,
        ((PE, "a.example"), (PE, "b.example")),
    ),
    Case(
        "user of A -> IDN domain (A-label)",
        user("a.example"),
        "x@bücher.example",
        ENC,
        ((PE, "a.example"), (PE, "xn--bcher-kva.example")),
    ),
    # Nobody serves it and no certificate is known: empty, with a note saying so.
    Case("unserved domain, nothing known", ANON, "x@nobody.example", ENC, (), note="no gateway"),
    Case(
        "gateway of D -> unserved domain",
        gateway("a.example"),
        "x@nobody.example",
        ENC,
        (),
        note="no gateway",
    ),
    # A user of D writing to a colleague in D: D's gateway once (internal mail goes through
    # the same gateway/hub) plus the colleague's genuine certificate when known.
    Case(
        "user of D -> colleague in D", user("a.example"), "zed@a.example", ENC, ((PE, "a.example"),)
    ),
    Case(
        "user of D -> colleague in D with genuine",
        user("a.example"),
        "ann@a.example",
        ENC,
        ((PE, "a.example"), (GEN, None)),
    ),
    # Fig. 2 re-encryption: a gateway asking for encryption containers never gets itself.
    Case(
        "gateway of A -> served B (re-encrypt)",
        gateway("a.example"),
        "carol@b.example",
        ENC,
        ((PE, "b.example"), (GEN, None)),
    ),
    Case(
        "gateway of D -> own domain",
        gateway("a.example"),
        "zed@a.example",
        ENC,
        (),
        note="own domain",  # D is served: saying "no gateway serves" would be false
    ),
    Case(
        "gateway of D -> own domain, genuine known",
        gateway("a.example"),
        "ann@a.example",
        ENC,
        ((GEN, None),),
    ),
    # A gateway account of several domains: each is its own domain (signing, never itself).
    Case(
        "gateway of {A, B} -> sender of A (sign)",
        BOTH,
        "ann@a.example",
        SIGN,
        ((PS, "a.example"),),
    ),
    Case(
        "gateway of {A, B} -> sender of B without a signing key (sign)",
        BOTH,
        "bob@b.example",
        SIGN,
        (),
        refused="no signing key",
    ),
    Case(
        "gateway of {A, B} -> sender of another domain (sign)",
        BOTH,
        "x@xn--bcher-kva.example",
        SIGN,
        (),
        refused="a.example,b.example cannot sign",
    ),
    Case(
        "gateway of {B, C} -> sender of A, which it does not stand for (sign)",
        gateway("b.example", "xn--bcher-kva.example"),
        "ann@a.example",
        SIGN,
        (),
        refused="cannot sign for a.example",
    ),
    Case("gateway of {A, B} -> own domain B", BOTH, "zed@b.example", ENC, (), note="own domain"),
    Case(
        "gateway of {A, B} -> own domain B, genuine known",
        BOTH,
        "carol@b.example",
        ENC,
        ((GEN, None),),
    ),
    Case(
        "gateway of {A, B} -> served C (re-encrypt)",
        BOTH,
        "x@bücher.example",
        ENC,
        ((PE, "xn--bcher-kva.example"),),
    ),
    Case(
        "gateway of {A, B} -> unserved domain",
        BOTH,
        "x@nobody.example",
        ENC,
        (),
        note="no gateway",
    ),
    # A user of a domain nobody serves is treated like an outsider.
    Case(
        "user of unserved U -> served B",
        user("u.example"),
        "bob@b.example",
        ENC,
        ((PE, "b.example"),),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case: Case) -> None:
    decision = decide(case.requestor, parse_address(case.address), case.purpose, VIEW)
    got = tuple((s.role, s.domain) for s in decision.specs)
    assert got == case.expected
    assert all(s.purpose is case.purpose for s in decision.specs)
    assert all(s.format is ContainerFormat.X509 for s in decision.specs)
    if case.refused is None:
        assert decision.refused is None
    else:
        assert decision.refused is not None and case.refused in decision.refused
        assert "unknown" not in decision.refused  # never an existence oracle
    if case.note is not None:
        assert case.note in decision.note
    if not decision.specs and "no gateway serves" in decision.note:
        assert parse_address(case.address).domain not in VIEW.served_domains


def test_format_is_carried_through() -> None:
    decision = decide(
        user("a.example"), parse_address("bob@b.example"), ENC, VIEW, ContainerFormat.OPENPGP
    )
    assert decision.specs == (
        ContainerSpec(PE, "a.example", ENC, ContainerFormat.OPENPGP),
        ContainerSpec(PE, "b.example", ENC, ContainerFormat.OPENPGP),
    )


def test_no_existence_oracle_for_served_domains() -> None:
    """Every valid address of a served domain gets the same kind of answer."""
    answers = {
        tuple(decide(ANON, parse_address(f"{local}@b.example"), ENC, VIEW).specs)
        for local in ("bob", "nobody-here", "x.y+z", "Postmaster")
    }
    assert answers == {(ContainerSpec(PE, "b.example", ENC),)}


PRIVATE = DirectoryView(
    served_domains=VIEW.served_domains,
    genuine_addresses=VIEW.genuine_addresses,
    signing_domains=VIEW.signing_domains,
    genuine_to_anonymous=False,
)


def test_genuine_certificates_of_served_mailboxes_can_be_kept_from_outsiders() -> None:
    """With genuine_to_anonymous off, an outsider's answer for carol@b (who has a genuine
    certificate) looks like the answer for any other address of b: no existence oracle
    even for mailboxes with a certificate. Accounts still get it; so does everyone for
    an address outside the served domains (not one of our mailboxes)."""
    def roles(view: DirectoryView, who: Requestor, address: str) -> list[Role]:
        return [s.role for s in decide(who, parse_address(address), ENC, view).specs]

    assert roles(VIEW, ANON, "carol@b.example") == [PE, GEN]  # the default: as the seed
    assert roles(PRIVATE, ANON, "carol@b.example") == roles(PRIVATE, ANON, "nobody@b.example")
    assert roles(PRIVATE, ANON, "carol@b.example") == [PE]
    assert roles(PRIVATE, user("a.example"), "carol@b.example") == [PE, PE, GEN]
    assert roles(PRIVATE, gateway("a.example"), "carol@b.example") == [PE, GEN]
    assert roles(PRIVATE, ANON, "dave@elsewhere.example") == [GEN]


def test_a_requestor_takes_its_domains_as_a_set_never_as_one_text() -> None:
    """A str is iterable: Requestor(USER, "a.example") would test substrings."""
    with pytest.raises(TypeError, match="frozenset"):
        Requestor(RequestorKind.USER, "a.example")  # type: ignore[arg-type]
    assert gateway("b.example", "a.example").named_domains == "a.example,b.example"
    assert ANON.named_domains == ""
