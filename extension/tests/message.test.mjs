import { test } from "node:test";
import assert from "node:assert/strict";
import {
  bufferToBase64,
  getHeader,
  newMessageId,
  prepareForOutbox,
  replyHeaders,
  setHeaders,
  splitMessage,
} from "../modules/message.js";

const MSG =
  "From: Alice <alice@example.com>\r\nSubject: a long\r\n subject\r\nX-Identity-Key: old\r\n" +
  "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nMIAGCSqG\r\n\r\nrest\r\n";

test("splitMessage cuts at the first empty line and keeps the body verbatim", () => {
  const s = splitMessage(MSG);
  assert.equal(s.eol, "\r\n");
  assert.equal(s.body, "MIAGCSqG\r\n\r\nrest\r\n");
  assert.ok(s.head.endsWith("enveloped-data"));
});

test("getHeader unfolds and is case-insensitive", () => {
  assert.equal(getHeader(MSG, "subject"), "a long subject");
  assert.equal(getHeader(MSG, "Message-ID"), null);
});

test("setHeaders replaces fields once, keeps others and the body, refuses injection", () => {
  const out = setHeaders(MSG, { "X-Identity-Key": "id1", "X-Account-Key": "account1" });
  assert.equal(out.match(/^X-Identity-Key:/gim).length, 1);
  assert.equal(getHeader(out, "X-Identity-Key"), "id1");
  assert.equal(getHeader(out, "X-Account-Key"), "account1");
  assert.equal(getHeader(out, "Subject"), "a long subject");
  assert.ok(out.includes("Subject: a long\r\n subject\r\n"), "folding keeps CRLF");
  assert.ok(out.endsWith("\r\n\r\nMIAGCSqG\r\n\r\nrest\r\n"));
  assert.equal(getHeader(setHeaders(out, { "X-Account-Key": null }), "X-Account-Key"), null);
  assert.throws(() => setHeaders(MSG, { "X-A": "v\r\nBcc: evil@x.org" }));
  assert.throws(() => setHeaders(MSG, { "Bad Name": "v" }));
});

test("prepareForOutbox adds keys, keeps the host's Message-ID, mints one when missing", () => {
  const withId = setHeaders(MSG, { "Message-ID": "<abc@example.com>" });
  const a = prepareForOutbox(withId, { identityKey: "id1", accountKey: "account1", sender: "alice@example.com" });
  assert.equal(getHeader(a, "Message-ID"), "<abc@example.com>");
  assert.equal(getHeader(a, "X-Identity-Key"), "id1");
  const b = prepareForOutbox(MSG, { identityKey: "id2", accountKey: "account2", sender: "alice@example.com" });
  assert.match(getHeader(b, "Message-ID"), /^<[0-9a-f-]{36}@example\.com>$/);
  const c = prepareForOutbox(MSG, { identityKey: "id2", accountKey: "account2", sender: "alice@example.com" });
  assert.notEqual(getHeader(b, "Message-ID"), getHeader(c, "Message-ID"));
});

test("newMessageId uses the sender's domain", () => {
  assert.equal(newMessageId("Alice <alice@example.com>", () => "r1"), "<r1@example.com>");
  assert.equal(newMessageId("nobody", () => "r2"), "<r2@keypost.invalid>");
});

test("bufferToBase64 matches Buffer for large binary input", () => {
  const bytes = new Uint8Array(200001).map((_, i) => (i * 7919) % 256);
  assert.equal(bufferToBase64(bytes.buffer), Buffer.from(bytes).toString("base64"));
});

test("replyHeaders chains References and refuses a malformed Message-ID", () => {
  assert.deepEqual(replyHeaders({ "message-id": ["<c@x>"], references: ["<a@x>\r\n <b@x>"] }), {
    "In-Reply-To": "<c@x>",
    References: "<a@x> <b@x> <c@x>",
  });
  assert.deepEqual(replyHeaders({ "message-id": ["<c@x>"], "in-reply-to": ["<b@x>"] }), {
    "In-Reply-To": "<c@x>",
    References: "<b@x> <c@x>",
  });
  assert.deepEqual(replyHeaders({ "message-id": ["<c@x>"] }), { "In-Reply-To": "<c@x>", References: "<c@x>" });
  assert.deepEqual(replyHeaders({ "message-id": ["c@x\r\nBcc: evil"] }), {});
  assert.deepEqual(replyHeaders({}), {});
});
