import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  collectNewsgroups,
  collectRecipients,
  extractAddress,
  invalidReason,
  normalizeAddress,
  recipientsKey,
  splitAddressList,
} from "../modules/recipients.js";

test("extractAddress takes the angle address, ignoring <> inside quotes", () => {
  assert.equal(extractAddress("Bob <bob@example.org>"), "bob@example.org");
  assert.equal(extractAddress('"Doe <x>, Jane" <jane@example.net>'), "jane@example.net");
  assert.equal(extractAddress("  carol@example.com "), "carol@example.com");
  assert.equal(extractAddress(""), "");
});

test("splitAddressList splits on commas outside quotes and angles", () => {
  assert.deepEqual(splitAddressList('"Doe, Jane" <jane@example.net>, bob@example.org; c@d.de'), [
    "jane@example.net",
    "bob@example.org",
    "c@d.de",
  ]);
  assert.deepEqual(splitAddressList(" , "), []);
});

// Shared with the host's tests (tests/host/test_host_compose.py): both sides must read a
// recipient string the same way, or the popup shows "ok" for a Send the host refuses.
const ADDRESS_LISTS = JSON.parse(
  readFileSync(new URL("../../tests/data/address_lists.json", import.meta.url), "utf8"),
).cases;

for (const { text, addresses } of ADDRESS_LISTS) {
  test(`splitAddressList reads ${JSON.stringify(text)} as the host does`, () => {
    assert.deepEqual(splitAddressList(text), addresses);
  });
}

test("collectRecipients: groups give their members, line breaks make one invalid entry", () => {
  const r = collectRecipients({
    to: ["Team: a@x.org, \"Last, First\" <b@y.org>;", "Nobody:;"],
    cc: "Bob <bob@example.org>\r\nBcc: evil@example.org",
    bcc: "c@z.org\0",
  });
  assert.deepEqual(r.all, ["a@x.org", "b@y.org"]);
  assert.deepEqual(r.invalid, ["Bob <bob@example.org>\r\nBcc: evil@example.org", "c@z.org\0"]);
});

test("normalizeAddress lower-cases the domain only and rejects non-addresses", () => {
  assert.equal(normalizeAddress("Bob@Example.ORG."), "Bob@example.org");
  assert.equal(normalizeAddress("no-at-sign"), "");
  assert.equal(normalizeAddress("@example.org"), "");
  assert.equal(normalizeAddress("a@localhost"), "");
  assert.equal(normalizeAddress("a b@example.org"), "");
});

test("collectRecipients dedupes across To/Cc/Bcc, keeps Bcc, reports invalid and unresolved", () => {
  const r = collectRecipients({
    to: ["Bob <bob@EXAMPLE.org>", "x"],
    cc: "bob@example.org, carol@example.net",
    bcc: ["dave@example.org", { id: "abc", type: "contact" }],
  });
  assert.deepEqual(r.to, ["bob@example.org"]);
  assert.deepEqual(r.cc, ["carol@example.net"]);
  assert.deepEqual(r.bcc, ["dave@example.org"]);
  assert.deepEqual(r.all, ["bob@example.org", "carol@example.net", "dave@example.org"]);
  assert.deepEqual(r.invalid, ["x"]);
  assert.equal(r.unresolved, 1);
});

test("recipientsKey ignores order and case", () => {
  assert.equal(recipientsKey("A@x.org", ["b@y.org", "C@z.org"]), recipientsKey("a@x.org", ["c@z.org", "B@y.org"]));
  assert.notEqual(recipientsKey("a@x.org", ["b@y.org"]), recipientsKey("a@x.org", ["b@y.org", "c@z.org"]));
});

test("collectNewsgroups: newsgroups and followupTo, arrays or comma lists, each once", () => {
  assert.deepEqual(collectNewsgroups({}), []);
  assert.deepEqual(collectNewsgroups({ newsgroups: [], followupTo: [] }), []);
  assert.deepEqual(
    collectNewsgroups({ newsgroups: ["comp.mail.misc", " de.comm.misc "], followupTo: "comp.mail.misc, alt.test" }),
    ["comp.mail.misc", "de.comm.misc", "alt.test"],
  );
});

test("invalidReason: an unexpanded address book list (no @) is told apart from a bad address", () => {
  const r = collectRecipients({ to: ["Team <Team>", "Project Team"], cc: ["bob@"] });
  assert.deepEqual(r.invalid, ["Team", "Project Team", "bob@"]);
  assert.deepEqual(r.invalid.map(invalidReason), ["reasonNoAtSign", "reasonNoAtSign", "reasonInvalidAddress"]);
});
