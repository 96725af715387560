"""The encrypt action: every party's key, Bcc hidden, fail closed, the Sent copy."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from host_support import GatewayKeys, call, code, configure, ok
from host_support import parse_mail as parse
from pki_util import email_cert, make_ca

from keypost.core import smime
from keypost.core.containers import DirectoryCA, to_der, to_pem
from keypost.host.errors import DirectoryUnreachable

ATTACHMENT = bytes(range(256)) * 200


def params(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "from": "Alice <alice@example.com>",
        "to": ["Bob <bob@example.org>"],
        "cc": ["carol@example.net"],
        "bcc": ["secret@example.org"],
        "subject": "Quarterly figures",
        "body_plain": "Hello Bob, the figures.",
        "body_html": "<p>Hello Bob, the <b>figures</b>.</p>",
        "attachments": [{"name": "figures.bin", "content_type": "application/octet-stream",
                         "data_base64": base64.b64encode(ATTACHMENT).decode()}],
        "headers": {"X-Mailer-Note": "keypost test"},
        "identity_key": "id1",
        "account_key": "account1",
    }
    base.update(extra)
    return base


def head(data: str) -> str:
    return data.split("\r\n\r\n", 1)[0]


def test_encrypts_for_every_gateway_on_the_path(
    setup: Any, ca: DirectoryCA, gateway_keys: GatewayKeys
) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.calls.clear()
    result = ok(host, "encrypt", **params())
    # One directory round trip for To, Cc, Bcc and the sender together.
    assert len(factory.directory.calls) == 1
    assert sorted(factory.directory.calls[0]) == sorted(
        ["bob@example.org", "carol@example.net", "secret@example.org", "alice@example.com"])
    message = result["message"].encode()
    assert smime.is_encrypted(message)
    outer = parse(message)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer["Message-ID"] == result["message_id"]
    assert outer["X-Identity-Key"] == "id1" and outer["X-Mailer-Note"] == "keypost test"
    assert "Bcc" not in outer and "secret@example.org" not in result["message"]
    # Both gateways (the sender's example.com and the recipients' example.org) can open
    # it; each key once, though the sender's gateway is bound to four addresses.
    assert result["key_count"] == 2
    assert len(smime.recipient_ids(message)) == 2
    for domain in ("example.com", "example.org"):
        clear = smime.Decryptor([gateway_keys.keys[domain]]).decrypt_message(message).message
        inner = parse(clear)
        assert inner["Subject"] == "Quarterly figures"
        assert b"secret@example.org" not in clear and "Bcc" not in inner
        parts = {p.get_content_type(): p for p in inner.walk()}
        assert "Hello Bob" in parts["text/plain"].get_content()
        assert "<b>figures</b>" in parts["text/html"].get_content()
        assert parts["application/octet-stream"].get_content() == ATTACHMENT
    statuses = {r["address"]: (r["party"], r["status"]) for r in result["recipients"]}
    assert statuses == {"bob@example.org": ("recipient", "ok"),
                        "carol@example.net": ("recipient", "ok"),
                        "secret@example.org": ("recipient", "ok"),
                        "alice@example.com": ("sender", "ok")}


def test_outbox_copy_carries_bcc_outside_only(
    setup: Any, ca: DirectoryCA, gateway_keys: GatewayKeys
) -> None:
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    result = ok(host, "encrypt", **params(for_outbox=True))
    outer = parse(result["message"])
    assert [a.addr_spec for a in outer["Bcc"].addresses] == ["secret@example.org"]
    message = result["message"].encode()
    clear = smime.Decryptor([gateway_keys.keys["example.org"]]).decrypt_message(message).message
    # The decrypted entity is the content only: the Bcc line is outside the envelope.
    encrypted_body = message.split(b"\r\n\r\n", 1)[1]
    assert b"secret@example.org" not in encrypted_body
    assert b"secret@example.org" not in clear.split(b"\r\n\r\n", 1)[1]


def test_a_recipient_string_holding_a_list_is_every_recipient_in_it(
    setup: Any, ca: DirectoryCA, gateway_keys: GatewayKeys
) -> None:
    """Pasted lists and RFC 5322 groups: the add-on shows each member as a recipient, so
    the host encrypts for each; Bcc members stay out of the content and the outer To/Cc."""
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.calls.clear()
    result = ok(host, "encrypt", **params(
        to=['Bob <bob@example.org>, "Doe, Carol" <carol@example.net>'], cc=["Nobody:;"],
        bcc=["Hidden: secret@example.org, dave@example.org;"], for_outbox=True))
    assert sorted(factory.directory.calls[0]) == sorted([
        "bob@example.org", "carol@example.net", "secret@example.org", "dave@example.org",
        "alice@example.com"])
    outer = parse(result["message"])
    assert [a.addr_spec for a in outer["To"].addresses] == ["bob@example.org", "carol@example.net"]
    assert outer["To"].addresses[1].display_name == "Doe, Carol" and "Cc" not in outer
    assert [a.addr_spec for a in outer["Bcc"].addresses] == [
        "secret@example.org", "dave@example.org"]
    message = result["message"].encode()
    clear = smime.Decryptor([gateway_keys.keys["example.org"]]).decrypt_message(message).message
    others = "".join(str(value) for name, value in outer.items() if name != "Bcc").encode()
    for hidden in (b"secret@example.org", b"dave@example.org", b"Hidden"):
        # decrypt_message puts the outer headers (with the Bcc line) back: the content only
        assert hidden not in others and hidden not in clear.split(b"\r\n\r\n", 1)[1]
        assert hidden not in message.split(b"\r\n\r\n", 1)[1]
    statuses = {r["address"]: r["status"] for r in result["recipients"]}
    assert statuses == dict.fromkeys([
        "bob@example.org", "carol@example.net", "secret@example.org", "dave@example.org",
        "alice@example.com"], "ok")


def test_sent_copy_is_the_clear_message(setup: Any, ca: DirectoryCA) -> None:
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    result = ok(host, "encrypt", **params())
    sent = parse(result["sent_copy"])
    assert sent["Message-ID"] == result["message_id"]
    assert sent["X-Keypost-Encrypted"] == "yes"
    assert [a.addr_spec for a in sent["Bcc"].addresses] == ["secret@example.org"]
    assert sent.get_content_type() == "multipart/mixed"
    assert not smime.is_encrypted(result["sent_copy"].encode())
    assert head(result["message"]).count("Message-ID") == 1


def test_fail_closed_lists_each_recipient(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    factory.directory.requestor_domain = None  # anonymous: nobody serves example.net
    assert configure(host, ca, username=None, password=...)["ok"]
    reply = call(host, "encrypt", **params(to=["bob@example.org", "bad@@address"]))
    assert code(reply) == 10
    assert "result" not in reply
    failing = {r["address"]: r for r in reply["error"]["details"]["recipients"]}
    assert set(failing) == {"bad@@address", "carol@example.net"}
    assert failing["carol@example.net"]["status"] == "no_container"
    assert "carol@example.net" in reply["error"]["message"]


def test_fail_closed_on_containers_from_another_ca(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.ca = DirectoryCA.generate()
    reply = call(host, "encrypt", **params())
    assert code(reply) == 10


def test_directory_down_is_reported_not_encrypted(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    factory.directory.fail = DirectoryUnreachable("cannot reach the directory", {})
    assert code(call(host, "encrypt", **params())) == 7


@pytest.mark.parametrize("bad", [{"to": [], "cc": [], "bcc": []}, {"headers": {"Bcc": "x"}}])
def test_bad_encrypt_params(setup: Any, ca: DirectoryCA, bad: dict[str, Any]) -> None:
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    assert code(call(host, "encrypt", **params(**bad))) == 1


def test_genuine_certificate_needs_its_root(setup: Any, ca: DirectoryCA) -> None:
    host, factory, _ = setup
    root = make_ca("Outside Root")  # a small outside CA and Frank's own certificate from it
    user_key, cert = email_cert(root, "frank@example.net")
    factory.directory.genuine = {"frank@example.net": to_der(cert)}
    assert configure(host, ca)["ok"]
    # Without the outside root the genuine certificate is reported but not used; the
    # sender's gateway container alone still makes the recipient usable.
    [frank] = ok(host, "lookup", recipients=["frank@example.net"])["recipients"]
    genuine = [c for c in frank["containers"] if c["role"] == "genuine"]
    assert frank["status"] == "ok" and genuine and not genuine[0]["valid"]
    assert not genuine[0]["used"] and genuine[0]["reasons"]
    # With the root configured it is used, and Frank can open the message himself.
    reply = configure(host, ca, password=..., extra_roots_pem=to_pem(root[1]).decode())
    assert reply["ok"] and reply["result"]["extra_roots"] == 1
    host.forget_containers()
    result = ok(host, "encrypt", **params(to=["frank@example.net"], cc=[], bcc=[]))
    [frank] = [r for r in result["recipients"] if r["address"] == "frank@example.net"]
    assert frank["summary"] == "via the gateway of example.com + genuine certificate"
    opened = smime.Decryptor([user_key]).decrypt_message(result["message"].encode())
    assert b"Hello Bob" in opened.message


def test_a_container_issued_for_another_address_is_not_used(
    setup: Any, ca: DirectoryCA
) -> None:
    """A directory that answers for bob with erin's (genuinely signed) containers: the pinned
    anchor accepts the signature, the address binding refuses them, nothing is encrypted."""
    host, factory, _ = setup
    assert configure(host, ca)["ok"]
    real_fetch = factory.directory.fetch

    def swapped(addresses: Any, while_waiting: Any = None) -> Any:
        found = real_fetch(["erin@example.org" if a == "bob@example.org" else a
                            for a in addresses], while_waiting)
        if "bob@example.org" in addresses:
            found["bob@example.org"] = found.pop("erin@example.org")
        return found

    factory.directory.fetch = swapped  # type: ignore[method-assign]
    [bob] = ok(host, "lookup", recipients=["bob@example.org"])["recipients"]
    assert bob["status"] == "invalid" and bob["containers"]
    assert all(not c["valid"] and not c["used"] for c in bob["containers"])
    assert all(any("not for bob@example.org" in r for r in c["reasons"])
               for c in bob["containers"])
    host.forget_containers()  # encrypt asks the directory again, and gets the same answer
    reply = call(host, "encrypt", **params(cc=[], bcc=[]))
    assert code(reply) == 10 and "result" not in reply
    assert [r["address"] for r in reply["error"]["details"]["recipients"]] == ["bob@example.org"]


def test_every_encrypt_mints_a_fresh_message_id(setup: Any, ca: DirectoryCA) -> None:
    """Thunderbird's Outbox refuses a Message-ID it already holds: a second send of the same
    compose details (e.g. after a refused first try) must not reuse the first one's."""
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    first, second = (ok(host, "encrypt", **params(for_outbox=True)) for _ in range(2))
    assert first["message_id"] != second["message_id"]
    for result in (first, second):
        assert result["message_id"].endswith("@example.com>")
        assert parse(result["message"])["Message-ID"] == result["message_id"]
        assert parse(result["sent_copy"])["Message-ID"] == result["message_id"]


def test_embedded_images_travel_inside_the_encrypted_entity(
    setup: Any, ca: DirectoryCA, gateway_keys: GatewayKeys
) -> None:
    """An HTML body with a data: image (how Thunderbird's editor holds embedded images):
    the decrypted message carries it as a multipart/related part the HTML names by cid:,
    and so does the Sent copy."""
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 50
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    result = ok(host, "encrypt", **params(body_html=f'<p>Logo:</p><img src="{url}">'))
    assert url not in result["message"] and url not in result["sent_copy"]
    clear = smime.Decryptor([gateway_keys.keys["example.org"]]).decrypt_message(
        result["message"].encode()).message
    for inner in (parse(clear), parse(result["sent_copy"])):
        related = next(p for p in inner.walk() if p.get_content_type() == "multipart/related")
        root, part = related.iter_parts()
        assert root.get_content_type() == "text/html"
        assert f'src="cid:{part["Content-ID"].strip("<>")}"' in root.get_content()
        assert part.get_content_type() == "image/png" and part.get_content() == image


def test_remote_images_marked_to_be_attached_are_reported(
    setup: Any, ca: DirectoryCA, gateway_keys: GatewayKeys
) -> None:
    """Thunderbird's own send would fetch an http(s) image marked moz-do-not-send="false"
    and embed it; the host fetches nothing, so it names such images for the add-on."""
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    url = "https://images.example.net/logo.png?a=1&b=2"
    html = (f'<img src="{url.replace("&", "&amp;")}" moz-do-not-send="false">'
            '<img src="https://images.example.net/linked.png">')
    result = ok(host, "encrypt", **params(body_html=html))
    assert result["remote_images"] == [url]
    assert ok(host, "encrypt", **params())["remote_images"] == []


def test_internationalised_addresses_are_encrypted_to_not_an_internal_error(
    setup: Any, ca: DirectoryCA, gateway_keys: GatewayKeys
) -> None:
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    result = ok(host, "encrypt", **params(to=["Bob <bob@bücher.example>"], cc=[], bcc=[]))
    assert [r["address"] for r in result["recipients"]] == [
        "bob@xn--bcher-kva.example", "alice@example.com"]
    message = result["message"].encode()
    assert parse(message)["To"].addresses[0].addr_spec == "bob@xn--bcher-kva.example"
    clear = smime.Decryptor([gateway_keys.keys["example.com"]]).decrypt_message(message).message
    assert parse(clear)["To"].addresses[0].addr_spec == "bob@xn--bcher-kva.example"
    # A UTF-8 local part is looked up fine but cannot be written: said so, not "internal".
    reply = call(host, "encrypt", **params(to=["jörg@example.org"], cc=[], bcc=[]))
    assert code(reply) == 1 and "jörg@example.org" in reply["error"]["message"]


def inner_entity(message: str, key: Any) -> bytes:
    """The MIME entity inside the envelope, as the gateway decrypts it."""
    der = base64.b64decode(message.split("\r\n\r\n", 1)[1])
    return smime.Decryptor([key]).decrypt_der(der)[0]


def test_compose_choices_are_clear_outer_headers(
    setup: Any, ca: DirectoryCA, gateway_keys: GatewayKeys
) -> None:
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    result = ok(host, "encrypt", **params(priority="highest", return_receipt=True))
    for copy in ("message", "sent_copy"):
        assert parse(result[copy])["X-Priority"] == "1 (Highest)"
        assert parse(result[copy])["Disposition-Notification-To"] == "Alice <alice@example.com>"
    inner = inner_entity(result["message"], gateway_keys.keys["example.org"])
    inner_head = inner.split(b"\r\n\r\n", 1)[0]
    assert b"X-Priority" not in inner_head and b"Disposition-Notification-To" not in inner_head


def test_a_recipient_gateway_with_an_ec_key_is_encrypted_to(
    host_dirs: Any, memory_keyring: Any, ca: DirectoryCA, gateway_keys: GatewayKeys
) -> None:
    """example.org's gateway holds an EC P-256 key: its containers get a
    KeyAgreeRecipientInfo beside the sender's gateway's RSA KeyTransRecipientInfo, and
    both gateways open the message. (Refused as "RSA only" before.)"""
    from cryptography.hazmat.primitives.asymmetric import ec
    from host_support import Factory, PolicyDirectory

    from keypost.host.actions import Host

    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = GatewayKeys({"example.com": gateway_keys.keys["example.com"],
                        "example.org": ec_key})  # type: ignore[dict-item]
    host = Host(host_dirs[0], host_dirs[1],
                client_factory=Factory(PolicyDirectory(ca, keys, "example.com")))
    assert configure(host, ca)["ok"]
    result = ok(host, "encrypt", **params(cc=[], bcc=[]))
    assert {r["status"] for r in result["recipients"]} == {"ok"}
    message = result["message"].encode()
    assert result["key_count"] == 2 and len(smime.recipient_ids(message)) == 2
    for key in keys.keys.values():
        clear = smime.Decryptor([key]).decrypt_message(message).message
        assert parse(clear)["Subject"] == "Quarterly figures"


# Characters Python's email header folding splits lines at besides CR and LF (str.splitlines):
# written into a header they became bare line breaks.
HEADER_BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
TEXT_FILE = {"content_type": "text/plain", "data_base64": "aGk="}


@pytest.mark.parametrize("char", HEADER_BREAKS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize(("param", "value"), [
    ("subject", "Figures{c}Bcc: eve@evil.example"),
    ("subject", "Figures{c}{c}the rest"),
    ("to", ['"Bob{c}B" <bob@example.org>']),
    ("from", '"Alice{c}A" <alice@example.com>'),
    ("reply_to", ['"Reply{c}R" <alice@example.com>']),
    ("headers", {"X-Note": "a{c}b"}),
    ("attachments", [{"name": "report{c}.txt", **TEXT_FILE}]),
])
def test_a_control_character_a_header_would_break_at_is_a_bad_request(
    setup: Any, ca: DirectoryCA, char: str, param: str, value: Any
) -> None:
    """VT, FF, FS, GS and RS in a header value were written as line breaks: "To: Bob" and a
    line "B <bob@example.org>" lost Bob's address from the outer To (Thunderbird's Outbox
    reads its recipients there), a subject's second line ended the header block, and text
    shaped like a field after one gave `internal` (12) instead of `bad_request`."""
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    filled = json.loads(json.dumps(value).replace("{c}", json.dumps(char)[1:-1]))
    reply = call(host, "encrypt", **params(**{param: filled}))
    assert code(reply) == 1, reply
    assert reply["error"]["details"] == {"param": param}
    assert "control character" in reply["error"]["message"]


@pytest.mark.parametrize(("param", "value"), [
    # bool("false") is True: a caller meaning "no Outbox" got the Bcc line in `message`.
    ("for_outbox", "false"),
    ("for_outbox", 0),
    ("attachments", [{"name": None, **TEXT_FILE}]),  # was sent as a file named "None"
    ("attachments", [{"name": 5, **TEXT_FILE}]),
    ("attachments", [{"name": "a.txt", "content_type": ["text/plain"], "data_base64": "aGk="}]),
    ("attachments", ["a.txt"]),
])
def test_a_parameter_of_the_wrong_type_is_a_bad_request(
    setup: Any, ca: DirectoryCA, param: str, value: Any
) -> None:
    host, _, _ = setup
    assert configure(host, ca)["ok"]
    reply = call(host, "encrypt", **params(**{param: value}))
    assert code(reply) == 1, reply
    assert reply["error"]["details"] == {"param": param}
