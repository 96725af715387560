"""Mail address parsing and normalisation as certificates need it."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keypost.core.address import MAX_LOCAL, Address, normalize_domain, parse_address
from keypost.core.errors import AddressError, KeypostError


@pytest.mark.parametrize(
    ("text", "local", "domain"),
    [
        ("alice@example.org", "alice", "example.org"),
        ("Alice@Example.ORG", "Alice", "example.org"),  # local case kept, domain folded
        ("<bob@b.example>", "bob", "b.example"),
        ("  bob@b.example ", "bob", "b.example"),
        ("a@b.example.", "a", "b.example"),  # the root dot is not part of the name
        ("x.y+tag@sub.b.example", "x.y+tag", "sub.b.example"),
        ("o'hara!#$%&*=?^_`{|}~-@b.example", "o'hara!#$%&*=?^_`{|}~-", "b.example"),
        ("info@bücher.example", "info", "xn--bcher-kva.example"),  # IDN -> A-label
        ("info@BÜCHER.Example", "info", "xn--bcher-kva.example"),
        ("info@XN--BCHER-KVA.example", "info", "xn--bcher-kva.example"),
        ("jörg@bücher.example", "jörg", "xn--bcher-kva.example"),  # RFC 6531 local part
        ("用户@例子.example", "用户", "xn--fsqu00a.example"),
        ("a" * MAX_LOCAL + "@b.example", "a" * MAX_LOCAL, "b.example"),
    ],
)
def test_parse_valid(text: str, local: str, domain: str) -> None:
    address = parse_address(text)
    assert address == Address(local, domain)
    assert str(address) == f"{local}@{domain}"
    assert address.ascii_local is local.isascii()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "alice",
        "@b.example",
        "alice@",
        "alice@b",  # single-label domains are not mail domains
        "a b@c.example",
        '"a b"@c.example',  # quoted local parts: no CA profile accepts them
        '"ab"@c.example',
        "a..b@c.example",
        ".a@c.example",
        "a.@c.example",
        "jö..rg@c.example",
        "jö(rg@c.example",
        "a@b@c.example",
        "a@-b.example",
        "a@b-.example",
        "a@b_c.example",
        "a@b..example",
        "a@" + "x" * 64 + ".example",  # label > 63
        "x" * (MAX_LOCAL + 1) + "@b.example",
        "ü" * 33 + "@b.example",  # 66 octets in UTF-8
        "a@" + ".".join(["abcdefgh"] * 30) + ".example",  # > 254
        "a\x00@b.example",
        "a\tb@c.example",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(AddressError) as err:
        parse_address(text)
    assert isinstance(err.value, KeypostError)
    message = str(err.value)
    assert message and "\n" not in message


def test_non_string_is_an_address_error() -> None:
    with pytest.raises(AddressError):
        parse_address(b"a@b.example")  # type: ignore[arg-type]


def test_key_folds_local_part_only_for_matching() -> None:
    a, b = parse_address("Alice@Example.org"), parse_address("alice@example.ORG")
    assert a != b  # local parts are case-sensitive in principle (RFC 5321 2.4)
    assert a.key() == b.key() == "alice@example.org"
    assert parse_address("JÖRG@b.example").key() == "jörg@b.example"


def test_key_joins_case_pairs_only() -> None:
    """The key lower-cases the local part, as certificate matching (names_address) does:
    full case folding would join other mailboxes (long s and `s`, the `fi` ligature and
    `fi`, `ß` and `ss`), and the directory would hand one the other's container."""
    for one, other in (("ſam@x.example", "sam@x.example"), ("ﬁle@x.example", "file@x.example"),
                       ("straße@x.example", "strasse@x.example")):
        assert parse_address(one).key() != parse_address(other).key()
    assert parse_address("Straße@x.example").key() == "straße@x.example"
    assert parse_address("Bob@x.example").key() == parse_address("bob@x.example").key()


def test_addresses_order_and_hash() -> None:
    items = {
        parse_address("b@x.example"),
        parse_address("a@x.example"),
        parse_address("a@x.example"),
    }
    assert sorted(items) == [Address("a", "x.example"), Address("b", "x.example")]


def test_normalize_domain() -> None:
    assert normalize_domain("Example.ORG.") == "example.org"
    assert normalize_domain("bücher.example") == "xn--bcher-kva.example"
    for bad in ("", ".", "localhost", "a..b", "-a.example"):
        with pytest.raises(AddressError):
            normalize_domain(bad)


atext = st.text(
    st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
    ),
    min_size=1,
    max_size=20,
)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--"  # "xn--..." would have to be a real A-label
)
top_labels = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--"
)


@given(
    st.lists(atext, min_size=1, max_size=3),
    st.lists(labels, min_size=1, max_size=3),
    top_labels,
)
def test_parse_is_idempotent(atoms: list[str], domain_labels: list[str], top: str) -> None:
    text = ".".join(atoms) + "@" + ".".join([*domain_labels, top])
    address = parse_address(text)
    assert parse_address(str(address)) == address
    assert parse_address(str(address).upper()).domain == address.domain


@pytest.mark.parametrize(
    "text",
    [
        "a@xn--zz.example",  # not a valid A-label
        "a\u200b@example.com",  # zero-width space would print like "a@example.com"
        "b\u202eob@example.com",  # bidi override
        "a@1.2",  # numeric top-level label
        "bob@example.123",
    ],
)
def test_refuses_deceptive_or_impossible_addresses(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_utf8_local_part_is_nfc_normalised() -> None:
    decomposed = "u\u0308ber@example.com"  # u + combining diaeresis
    assert parse_address(decomposed).local == "\u00fcber"


def test_local_part_limit_applies_to_the_composed_form() -> None:
    # 32 x "u + combining diaeresis" is 96 octets decomposed, 64 composed: accepted.
    assert parse_address("u\u0308" * 32 + "@example.com").local == "\u00fc" * 32


@pytest.mark.parametrize(
    ("text", "mapped_to"),
    [
        ("a@exa\u200bmple.com", "example.com"),  # a zero-width space, dropped by UTS 46
        ("a@\u2488com", "1.com"),  # "DIGIT ONE FULL STOP" folds to "1." (another name)
        ("a@ＥＸＡＭＰＬＥ.com", "example.com"),  # fullwidth compatibility forms
    ],
)
def test_idna_mappings_that_change_the_domain_are_refused(text: str, mapped_to: str) -> None:
    """A container must name the domain that was asked for, never what a mapping makes of it."""
    with pytest.raises(AddressError) as err:
        parse_address(text)
    message = str(err.value)
    assert "\n" not in message
    assert "would change under IDNA mapping" in message or "invalid internationalised" in message


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        # IDNA 2008 (RFC 9598), not Python's IDNA 2003 codec, which maps ß to "ss":
        ("a@faß.de", "xn--fa-hia.de"),
        ("a@straße.example", "xn--strae-oqa.example"),
        ("a@Straße.example", "xn--strae-oqa.example"),
    ],
)
def test_idna_2008_keeps_sharp_s(text: str, domain: str) -> None:
    assert parse_address(text).domain == domain
    assert parse_address(text).domain != parse_address(text.replace("ß", "ss")).domain


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("a@bu\u0308cher.example", "xn--bcher-kva.example"),  # decomposed: the same name
        ("a@BÜCHER.example", "xn--bcher-kva.example"),
        ("a@bücher\u3002example", "xn--bcher-kva.example"),  # ideographic full stop
        ("a@例子.example", "xn--fsqu00a.example"),
    ],
)
def test_lossless_idn_spellings_are_accepted(text: str, domain: str) -> None:
    assert parse_address(text).domain == domain


def test_only_one_trailing_dot_is_the_root() -> None:
    assert parse_address("a@example.org.").domain == "example.org"
    for bad in ("a@example.org..", "a@example.org...", "a@."):
        with pytest.raises(AddressError):
            parse_address(bad)


@pytest.mark.parametrize("text", ["\udcff@x.example", "a\ud800b@x.example", "a@\udcff.example"])
def test_lone_surrogates_are_an_address_error(text: str) -> None:
    """As JSON ("\\ud800") or undecodable argv bytes deliver them: never UnicodeEncodeError."""
    with pytest.raises(AddressError):
        parse_address(text)


def test_every_whitespace_control_and_surrogate_is_refused() -> None:
    """The one-scan check matches its definition: str.isspace, C0 controls, surrogates."""
    forbidden = [c for c in map(chr, range(0x3100)) if c.isspace() or ord(c) < 32
                 or "\ud800" <= c <= "\udfff"] + ["\ud800", "\udfff", "\u3000"]
    assert "\u00a0" in forbidden and "\u2028" in forbidden  # not only ASCII whitespace
    for ch in forbidden:
        with pytest.raises(AddressError):
            parse_address(f"a{ch}b@example.org")
    assert parse_address("a\u00e9b@example.org").local == "a\u00e9b"


# Unicode Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 14-16), written
# out here from the standard rather than taken from the module, so the test can disagree.
DEFAULT_IGNORABLE = [
    (0x00AD, 0x00AD, "SOFT HYPHEN"),
    (0x034F, 0x034F, "COMBINING GRAPHEME JOINER"),
    (0x061C, 0x061C, "ARABIC LETTER MARK"),
    (0x115F, 0x1160, "HANGUL CHOSEONG / JUNGSEONG FILLER"),
    (0x17B4, 0x17B5, "KHMER VOWEL INHERENT AQ / AA"),
    (0x180B, 0x180F, "MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR"),
    (0x200B, 0x200F, "ZWSP, ZWNJ, ZWJ, LRM, RLM"),
    (0x202A, 0x202E, "BIDI EMBEDDINGS AND OVERRIDES"),
    (0x2060, 0x206F, "WORD JOINER .. NOMINAL DIGIT SHAPES"),
    (0x3164, 0x3164, "HANGUL FILLER"),
    (0xFE00, 0xFE0F, "VARIATION SELECTOR-1..16"),
    (0xFEFF, 0xFEFF, "ZERO WIDTH NO-BREAK SPACE"),
    (0xFFA0, 0xFFA0, "HALFWIDTH HANGUL FILLER"),
    (0xFFF0, 0xFFF8, "reserved"),
    (0x1BCA0, 0x1BCA3, "SHORTHAND FORMAT CONTROLS"),
    (0x1D173, 0x1D17A, "MUSICAL SYMBOL BEGIN BEAM .. END PHRASE"),
    (0xE0000, 0xE0FFF, "TAGS, VARIATION SELECTOR-17..256, reserved"),
]


@pytest.mark.parametrize(("first", "last", "name"), DEFAULT_IGNORABLE,
                         ids=[name for _, _, name in DEFAULT_IGNORABLE])
def test_default_ignorable_code_points_are_refused_in_local_parts(
    first: int, last: int, name: str
) -> None:
    """An invisible code point makes "jo\u034frg@x" print as "jorg@x", another mailbox: a
    spoofed recipient. U+034F, the variation selectors and the Hangul fillers were
    accepted (they are Mn / Lo, not Cf). The message names the code point."""
    for cp in range(first, last + 1):
        for text in (f"j\u00f6{chr(cp)}rg@example.org", f"{chr(cp)}jorg@example.org"):
            with pytest.raises(AddressError, match=f"invisible character U\\+{cp:04X} "):
                parse_address(text)
    # the domain path refuses them already (IDNA 2008 / UTS 46 drops or disallows them)
    with pytest.raises(AddressError, match="internationalised domain"):
        parse_address(f"alice@b\u00fc{chr(first)}cher.example")


@pytest.mark.parametrize(
    "local",
    ["j\u00f6rg", "\ud64d\uae38\ub3d9", "\u1825\u1837\u182d", "\u05d3\u05d5\u05d3",
     "\u0928\u092e\u0938\u094d\u0924\u0947", "\u00e0\u0301"],
    ids=["latin", "hangul", "mongolian", "hebrew", "devanagari virama", "combining acute"],
)
def test_visible_non_ascii_local_parts_stay_accepted(local: str) -> None:
    """The neighbours of the refused code points (Hangul syllables, Mongolian letters,
    combining marks that do show) are untouched."""
    assert parse_address(f"{local}@example.org").local == unicodedata.normalize("NFC", local)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a@\u2488com", "U+2488 not allowed"),  # the idna package's own words
        ("a@x\u200db.example", "U+200D not allowed"),
        ("a@" + "\u00e9" * 70 + ".example", "Label too long"),
    ],
)
def test_idna_refusals_say_why(text: str, reason: str) -> None:
    """"invalid internationalised domain" alone left the user guessing which character."""
    with pytest.raises(AddressError) as err:
        parse_address(text)
    message = str(err.value)
    assert message.startswith("invalid internationalised domain")
    assert reason in message
    assert "\n" not in message and "Traceback" not in message
