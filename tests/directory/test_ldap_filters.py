"""Addresses from filters (what real clients send), DNs, attribute selection, search plans."""

from __future__ import annotations

import pytest

from keypost.directory.ldap import filters as F
from keypost.directory.ldap.answers import (
    ALL_ATTRIBUTES,
    Attr,
    PlanKind,
    SearchPlan,
    plan_search,
    select_attributes,
    suffix_attributes,
)
from keypost.directory.ldap.dn import (
    InvalidDN,
    escape_value,
    is_within,
    normalise_type,
    parse_dn,
    reduce_bind_name,
)
from keypost.directory.ldap.messages import DerefAliases, ResultCode, Scope, SearchRequest


def eq(attr: str, value: str) -> F.EqualityMatch:
    return F.EqualityMatch(attr, value.encode())


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        # Thunderbird: (&(objectClass=*)(|(mail=a)(mail=b)))
        (
            F.And((F.Present("objectClass"), F.Or((eq("mail", "a@x.org"), eq("mail", "b@y.org"))))),
            ["a@x.org", "b@y.org"],
        ),
        (eq("mail", "alice@example.com"), ["alice@example.com"]),  # gpgsm
        # Outlook: (&(mail=a)(objectClass=person)) and (|(mail=a)(proxyAddresses=smtp:a))
        (F.And((eq("mail", "a@x.org"), eq("objectClass", "person"))), ["a@x.org"]),
        (F.Or((eq("mail", "a@x.org"), eq("proxyAddresses", "smtp:a@x.org"))), ["a@x.org"]),
        (eq("MAIL", "a@x.org"), ["a@x.org"]),
        (eq("email", "a@x.org"), ["a@x.org"]),
        (eq("rfc822Mailbox", "a@x.org"), ["a@x.org"]),
        (eq("0.9.2342.19200300.100.1.3", "a@x.org"), ["a@x.org"]),
        # duplicates (case-insensitive) once, first spelling wins
        (F.Or((eq("mail", "A@x.org"), eq("mail", "a@X.org"))), ["A@x.org"]),
        # ... also spelt otherwise: one mailbox (Address.key) is one entry, not one per
        # spelling (a trailing dot, angle brackets, the domain's U-labels or A-labels)
        (F.Or((eq("mail", "a@x.org"), eq("mail", "a@x.org."), eq("mail", "<A@x.org>"),
               eq("mail", "a@bücher.example"), eq("mail", "a@xn--bcher-kva.example"))),
         ["a@x.org", "a@bücher.example"]),
        # lower-cased as Address.key does, not case-folded: these are two mailboxes each
        (F.Or((eq("mail", "straße@x.org"), eq("mail", "strasse@x.org"))),
         ["straße@x.org", "strasse@x.org"]),
        (F.Or((eq("mail", "ſam@x.org"), eq("mail", "sam@x.org"))), ["ſam@x.org", "sam@x.org"]),
        # never an enumeration
        (F.Substrings("mail", ((F.SubstringKind.ANY, b"@x.org"),)), []),
        (F.Present("mail"), []),
        (F.GreaterOrEqual("mail", b"a"), []),
        (F.ApproxMatch("mail", b"a@x.org"), []),
        (F.ExtensibleMatch(None, "mail", b"a@x.org"), []),
        (F.Not(eq("mail", "a@x.org")), []),
        (F.And((eq("mail", "a@x.org"), F.Not(eq("mail", "b@x.org")))), ["a@x.org"]),
        (eq("cn", "a@x.org"), []),
        (eq("mail;lang-de", "a@x.org"), []),
        (F.EqualityMatch("mail", b"\xff\xfe"), []),
        (F.And(()), []),
    ],
)
def test_addresses_from_filter(f: F.Filter, expected: list[str]) -> None:
    assert F.addresses_from_filter(f) == expected


def test_addresses_limit() -> None:
    f = F.Or(tuple(eq("mail", f"u{i}@x.org") for i in range(10)))
    assert F.addresses_from_filter(f, limit=3) == ["u0@x.org", "u1@x.org", "u2@x.org"]


def test_dn_normalisation() -> None:
    assert parse_dn("MAIL=Alice\\+x@Example.com , DC=keypost") == parse_dn(
        "mail=alice+x@example.com".replace("+", "\\2B") + ",dc=keypost"
    )
    assert parse_dn("0.9.2342.19200300.100.1.25=KeyPost") == parse_dn("dc=keypost")
    assert parse_dn("") == ()
    assert is_within(parse_dn("mail=a@x.org,dc=keypost"), parse_dn("dc=keypost"))
    assert not is_within(parse_dn("dc=other"), parse_dn("dc=keypost"))
    with pytest.raises(InvalidDN):
        parse_dn("no equals sign")
    with pytest.raises(InvalidDN):
        parse_dn("cn=a<b")


def test_escape_value_round_trips() -> None:
    for value in ["a+b@x.org", "#hash", " lead", "trail ", 'q"uote', "semi;colon,comma",
                  "plain@x.org", "mid#dle sp@x.org", "back\\slash<>", "nul\0", "nl \n",
                  "Straße@X.org"]:
        dn = f"mail={escape_value(value)},dc=keypost"
        [ava] = parse_dn(dn)[0]
        assert (ava.type, ava.value) == ("mail", value)


def test_dn_values_are_kept_as_written() -> None:
    """parse_dn keeps each value as written (unescaped, case kept): it used to hand back
    case-folded values only, so `mail=Straße@x` became `strasse@x`, another mailbox."""
    dn = parse_dn(r"MAIL=Stra\c3\9fe@X.org , DC=KeyPost,o=Example\, Inc.")
    assert [[(a.type, a.value) for a in rdn] for rdn in dn] == [
        [("mail", "Straße@X.org")], [("dc", "KeyPost")], [("o", "Example, Inc.")]]
    assert parse_dn('cn=" Quoted Value "')[0][0].value == " Quoted Value "


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        # mail values compare as Address.key does: the local part lower-cased, the domain
        # as lower-case A-labels; never case-folded (ß is not ss, ſ is not s)
        ("mail=BOB@X.ORG,dc=keypost", "mail=bob@x.org,dc=keypost", True),
        ("mail=Straße@x.org,dc=keypost", "mail=strasse@x.org,dc=keypost", False),
        ("mail=ſam@x.org,dc=keypost", "mail=sam@x.org,dc=keypost", False),
        ("mail=Straße@x.org,dc=keypost", r"mail=STRA\C3\9FE@X.org,dc=keypost", True),
        ("mail=a@Bücher.example,dc=keypost", "mail=a@xn--bcher-kva.example,dc=keypost", True),
        # the naming attributes of suffixes (dc, o, ou, cn, uid) match case-insensitively
        ("DC=KEYPOST", "dc=keypost", True),
        ("dc=keypost,  DC=Example", "dc=KeyPost,dc=example", True),
        (r"dc=key\70ost", "dc=keypost", True),
        (r"o=Example\, Inc.,dc=x", 'o="example, inc.",dc=x', True),
        (r"o=Stra\c3\9fe", "o=STRASSE", True),  # caseIgnoreMatch folds (RFC 4518 2.2)
        ("dc=keypost", "dc=other", False),
    ],
)
def test_dn_comparison(one: str, other: str, same: bool) -> None:
    assert (parse_dn(one) == parse_dn(other)) is same


@pytest.mark.parametrize(
    ("name", "account"),
    [
        ("uid=alice,dc=keypost", "alice"),
        ("UID=Alice,dc=keypost", "Alice"),
        ("cn=alice,ou=people,dc=example,dc=com", "alice"),
        ("cn=Bob\\2C Jr,ou=x", "Bob, Jr"),
        ("alice", "alice"),
        (" alice ", "alice"),
        ("uid = alice , dc=keypost", "alice"),
        ('uid="Alice Smith",dc=keypost', "Alice Smith"),
        ("uid=J\\c3\\b6rg,dc=keypost", "Jörg"),
        ("mail=a@x.org,dc=keypost", "mail=a@x.org,dc=keypost"),
    ],
)
def test_reduce_bind_name(name: str, account: str) -> None:
    assert reduce_bind_name(name) == account


def test_select_attributes() -> None:
    assert select_attributes(()) == ALL_ATTRIBUTES
    assert select_attributes(("*",)) == ALL_ATTRIBUTES
    assert select_attributes(("1.1",)) == ()
    assert select_attributes(("+",)) == ()
    assert select_attributes(("usercertificate;binary",)) == (
        (Attr.CERTIFICATES, "usercertificate;binary"),
    )
    assert select_attributes(("userCertificate",)) == ((Attr.CERTIFICATES, "userCertificate"),)
    assert select_attributes(("2.5.4.36", "userCertificate;binary")) == (
        (Attr.CERTIFICATES, "2.5.4.36"),
    )
    assert select_attributes(("mail;binary", "cn;lang-de", "MAIL")) == ((Attr.MAIL, "MAIL"),)
    assert select_attributes(("1.1", "userSMIMECertificate")) == (
        (Attr.SMIME, "userSMIMECertificate"),
    )


SUFFIX = parse_dn("dc=keypost")


def search(base: str, scope: Scope, f: F.Filter) -> SearchRequest:
    return SearchRequest(base, scope, DerefAliases.NEVER, 0, 0, False, f, ())


@pytest.mark.parametrize(
    ("base", "scope", "kind", "addresses", "code"),
    [
        ("", Scope.BASE, PlanKind.ROOT_DSE, (), ResultCode.SUCCESS),
        ("dc=keypost", Scope.SUB, PlanKind.ENTRIES, ("a@x.org",), ResultCode.SUCCESS),
        ("DC=KeyPost", Scope.ONE, PlanKind.ENTRIES, ("a@x.org",), ResultCode.SUCCESS),
        ("dc=keypost", Scope.BASE, PlanKind.RESULT, (), ResultCode.SUCCESS),
        ("ou=people,dc=keypost", Scope.SUB, PlanKind.ENTRIES, ("a@x.org",), ResultCode.SUCCESS),
        ("", Scope.SUB, PlanKind.ENTRIES, ("a@x.org",), ResultCode.SUCCESS),
        ("", Scope.ONE, PlanKind.RESULT, (), ResultCode.SUCCESS),
        ("dc=example,dc=com", Scope.SUB, PlanKind.RESULT, (), ResultCode.NO_SUCH_OBJECT),
        ("mail=a@x.org,dc=keypost", Scope.BASE, PlanKind.ENTRIES, ("a@x.org",), 0),
        ("mail=b@x.org,dc=keypost", Scope.BASE, PlanKind.RESULT, (), ResultCode.SUCCESS),
        ("mail=a@x.org,dc=keypost", Scope.ONE, PlanKind.RESULT, (), ResultCode.SUCCESS),
        ("not a dn", Scope.SUB, PlanKind.RESULT, (), ResultCode.INVALID_DN_SYNTAX),
    ],
)
def test_plan_search(
    base: str, scope: Scope, kind: PlanKind, addresses: tuple[str, ...], code: int
) -> None:
    plan = plan_search(search(base, scope, eq("mail", "a@x.org")), SUFFIX, 100)
    assert (plan.kind, plan.addresses, plan.code) == (kind, addresses, code)
    if code == ResultCode.NO_SUCH_OBJECT:
        assert plan.matched_dn == ""


def test_plan_reads_entry_by_dn_without_address_in_filter() -> None:
    plan = plan_search(
        search("mail=a@x.org,dc=keypost", Scope.BASE, F.Present("objectClass")), SUFFIX, 100
    )
    assert (plan.kind, plan.addresses) == (PlanKind.ENTRIES, ("a@x.org",))


@pytest.mark.parametrize(
    ("base", "address"),
    [
        # the address as written in the base: case-folding it read another mailbox's entry
        ("mail=Straße@x.org,dc=keypost", "Straße@x.org"),
        (r"mail=Stra\c3\9fe@x.org, DC=KEYPOST", "Straße@x.org"),
        ("mail=ſam@x.org,dc=keypost", "ſam@x.org"),
        ("mail=BOB@X.org,dc=keypost", "BOB@X.org"),
        (r"MAIL=a\+b@x.org , dc=KeyPost", "a+b@x.org"),
    ],
)
def test_plan_reads_entry_by_dn_as_written(base: str, address: str) -> None:
    plan = plan_search(search(base, Scope.BASE, F.Present("objectClass")), SUFFIX, 100)
    assert (plan.kind, plan.addresses) == (PlanKind.ENTRIES, (address,))


@pytest.mark.parametrize(
    ("base", "asked", "addresses"),
    [
        # the filter's spelling of the base's address, compared as Address.key compares
        ("mail=bob@x.org,dc=keypost", "BOB@X.ORG", ("BOB@X.ORG",)),
        ("mail=BOB@X.org,dc=keypost", "bob@x.org", ("bob@x.org",)),
        ("mail=Straße@x.org,dc=keypost", "STRAßE@x.org", ("STRAßE@x.org",)),
        ("mail=a@bücher.example,dc=keypost", "a@xn--bcher-kva.example",
         ("a@xn--bcher-kva.example",)),
        # other mailboxes are out of scope, however case folding would join them
        ("mail=Straße@x.org,dc=keypost", "strasse@x.org", ()),
        ("mail=strasse@x.org,dc=keypost", "Straße@x.org", ()),
        ("mail=sam@x.org,dc=keypost", "ſam@x.org", ()),
    ],
)
def test_plan_entry_base_and_filter_name_one_mailbox(
    base: str, asked: str, addresses: tuple[str, ...]
) -> None:
    plan = plan_search(search(base, Scope.BASE, eq("mail", asked)), SUFFIX, 100)
    assert plan.addresses == addresses
    assert plan.kind is (PlanKind.ENTRIES if addresses else PlanKind.RESULT)


def test_plan_substring_gives_nothing() -> None:
    f = F.Substrings("mail", ((F.SubstringKind.INITIAL, b"a"),))
    plan = plan_search(search("dc=keypost", Scope.SUB, f), SUFFIX, 100)
    assert (plan.kind, plan.code) == (PlanKind.RESULT, ResultCode.SUCCESS)


@pytest.mark.parametrize("base", ["dc=keypost", "", "mail=u0@x.org,dc=keypost"])
def test_plan_refuses_more_addresses_than_the_limit_whole(base: str) -> None:
    """One address over the limit: adminLimitExceeded naming the limit, no partial answer
    (the 101st address was dropped silently before); at the limit: all of them."""
    def plan(n: int) -> SearchPlan:
        f = F.Or(tuple(eq("mail", f"u{i}@x.org") for i in range(n)))
        return plan_search(search(base, Scope.SUB, f), SUFFIX, 3)

    refused = plan(4)
    assert (refused.kind, refused.addresses, refused.code) == (
        PlanKind.RESULT, (), ResultCode.ADMIN_LIMIT_EXCEEDED)
    assert "at most 3" in refused.diagnostic
    fits = plan(3)
    assert fits.kind is PlanKind.ENTRIES and fits.code == ResultCode.SUCCESS
    if base.startswith("mail="):
        assert fits.addresses == ("u0@x.org",)
    else:
        assert fits.addresses == ("u0@x.org", "u1@x.org", "u2@x.org")


@pytest.mark.parametrize(
    ("base", "f", "kind"),
    [
        ("dc=keypost", F.Present("objectClass"), PlanKind.SUFFIX),
        ("DC=KeyPost", F.Present("2.5.4.0"), PlanKind.SUFFIX),
        ("dc=keypost", eq("domainComponent", "KEYPOST"), PlanKind.SUFFIX),
        ("dc=keypost", F.And((F.Present("objectclass"), F.Not(eq("mail", "a@x.org")))),
         PlanKind.SUFFIX),
        ("dc=keypost", F.Or((eq("mail", "a@x.org"), eq("objectClass", "domain"))),
         PlanKind.SUFFIX),
        ("dc=keypost", eq("objectClass", "inetOrgPerson"), PlanKind.RESULT),
        ("dc=keypost", F.Present("mail"), PlanKind.RESULT),
        ("dc=keypost", F.Not(F.Substrings("dc", ((F.SubstringKind.INITIAL, b"x"),))),
         PlanKind.RESULT),  # Undefined stays Undefined under NOT
        ("ou=people,dc=keypost", F.Present("objectClass"), PlanKind.RESULT),  # no such entry
    ],
)
def test_plan_base_search_of_the_suffix(base: str, f: F.Filter, kind: PlanKind) -> None:
    plan = plan_search(search(base, Scope.BASE, f), SUFFIX, 100)
    assert (plan.kind, plan.addresses, plan.code) == (kind, (), ResultCode.SUCCESS)


def test_evaluate_three_valued() -> None:
    entry = {"objectclass": ("top", "domain"), "dc": ("keypost",)}
    undefined = F.GreaterOrEqual("dc", b"a")
    true, false = F.Present("dc"), eq("dc", "other")

    def ev(f: F.Filter) -> bool | None:
        return F.evaluate(f, entry, normalise_type)

    assert (ev(true), ev(false), ev(undefined), ev(F.Not(undefined))) == (True, False, None, None)
    assert (ev(F.And((true, undefined))), ev(F.And((false, undefined)))) == (None, False)
    assert (ev(F.Or((true, undefined))), ev(F.Or((false, undefined)))) == (True, None)
    assert (ev(F.And(())), ev(F.Or(()))) == (True, False)  # RFC 4526 absolute true/false


def test_evaluate_compares_by_the_attributes_matching_rule() -> None:
    """Equality compares as DNs do: caseIgnoreMatch (case folding) for naming attributes,
    Address.key for mail, where case folding would join two mailboxes."""
    entry = {"mail": ("Straße@x.org",), "cn": ("Straße",), "objectclass": ("top",)}

    def ev(attr: str, value: str) -> bool | None:
        return F.evaluate(eq(attr, value), entry, normalise_type)

    assert (ev("mail", "STRAßE@X.org"), ev("mail", "strasse@x.org")) == (True, False)
    assert (ev("cn", "STRASSE"), ev("objectClass", "TOP")) == (True, True)


@pytest.mark.parametrize(
    ("suffix", "attributes"),
    [
        ("dc=KeyPost,dc=example", (("objectclass", ("top", "domain")), ("dc", ("KeyPost",)))),
        (r"o=Example\, Inc.", (("objectclass", ("top", "organization")),
                                ("o", ("Example, Inc.",)))),
        ("organizationalUnitName=Keys,o=x", (("objectclass", ("top", "organizationalUnit")),
                                             ("ou", ("Keys",)))),
        ("cn=keys+dc=x", (("objectclass", ("top", "domain")), ("cn", ("keys",)),
                          ("dc", ("x",)))),
        ("uid=keys", (("objectclass", ("top", "extensibleObject")), ("uid", ("keys",)))),
    ],
)
def test_suffix_entry_attributes(
    suffix: str, attributes: tuple[tuple[str, tuple[str, ...]], ...]
) -> None:
    assert suffix_attributes(parse_dn(suffix)[0]) == attributes
