import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { composeNotices, remoteImagesToAttach, sameNotices } from "../modules/notices.js";
import { attributeValue, startTags } from "../modules/html_tags.js";

const REMOTE = "https://images.example.net/logo.png";

test("remote images marked to be attached: img src and body background, each once", () => {
  const cases = [
    [`<img src="${REMOTE}" moz-do-not-send="false">`, [REMOTE]],
    [`<IMG MOZ-DO-NOT-SEND=false SRC= ${REMOTE} >`, [REMOTE]],
    [`<img/moz-do-not-send="false"/src=' ${REMOTE}\n'>`, [REMOTE]],
    [`<body background="http://e.example/b.png" moz-do-not-send="false">`, ["http://e.example/b.png"]],
    [`<img src="${REMOTE}?a=1&amp;b=2" moz-do-not-send="false">`, [`${REMOTE}?a=1&b=2`]],
    [`<img src="${REMOTE}" moz-do-not-send="false"><p><img moz-do-not-send="false" src="${REMOTE}">`, [REMOTE]],
    [`<img src="${REMOTE}">`, []], // a link in Thunderbird's own send too
    [`<img src="${REMOTE}" moz-do-not-send="true">`, []],
    [`<img src="${REMOTE}" moz-do-not-send="FALSE">`, []], // Thunderbird compares exactly
    [`<td background="${REMOTE}" moz-do-not-send="false">`, []], // Thunderbird does not fetch it
    [`<img src="data:image/png;base64,AAAA" moz-do-not-send="false">`, []],
    [`<img src="ftp://e.example/x.png" moz-do-not-send="false">`, []],
    [`<!-- <img src="${REMOTE}" moz-do-not-send="false"> -->`, []],
    [`<textarea><img src="${REMOTE}" moz-do-not-send="false"></textarea>`, []],
    [`<img alt="x src=" ${REMOTE}" moz-do-not-send="false">`, []], // alt's quote hides src
    [`<img src="${REMOTE}" moz-do-not-send="false"`, []], // the document ends inside the tag
  ];
  for (const [html, expected] of cases) assert.deepEqual(remoteImagesToAttach(html), expected, html);
});

test("startTags reads tags as the HTML tokenizer does", () => {
  const html = '<!--><p a=1 b="x>y"/c><?x <img>?><script>"<img>"</SCRIPT ><br =x d=e=f><![CDATA[<i>]]>';
  const tags = [...startTags(html)];
  assert.deepEqual(tags.map((t) => t.name), ["p", "script", "br"]);
  assert.deepEqual([...tags[0].attrs], [["a", "1"], ["b", "x>y"], ["c", ""]]);
  assert.deepEqual([...tags[2].attrs], [["=x", ""], ["d", "e=f"]]);
  assert.equal(attributeValue("a&amp;b&#x41;&#66;&lt;&unknown;"), "a&bAB<&unknown;");
});

test("notices: newsgroups and remote images, with Encrypt on; none for a plain mail", () => {
  const details = {
    to: ["bob@example.org"],
    newsgroups: ["comp.mail.misc"],
    followupTo: "de.comm.misc",
    isPlainText: false,
    body: `<p>Hi</p><img src="${REMOTE}" moz-do-not-send="false">`,
  };
  assert.deepEqual(composeNotices(details), [
    { key: "noticeNewsgroups", subs: ["comp.mail.misc, de.comm.misc"] },
    { key: "noticeRemoteImages", subs: [REMOTE] },
  ]);
  assert.deepEqual(composeNotices({ ...details, isPlainText: true, newsgroups: [], followupTo: [] }), []);
  assert.deepEqual(composeNotices({ to: ["bob@example.org"], body: "<p>hi</p>" }), []);
  assert.equal(sameNotices([], undefined), true);
  assert.equal(sameNotices(composeNotices(details), []), false);
});

test("every notice has a text in en and de", () => {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..");
  const source = readFileSync(join(root, "modules", "notices.js"), "utf8");
  const keys = [...source.matchAll(/key: "(\w+)"/g)].map((m) => m[1]);
  const placeholder = {
    noticeNewsgroups: /\$GROUPS\$/,
    noticeRemoteImages: /\$URLS\$/,
    noticeRedirect: /./,
    noticeOwnSecurity: /\$TECHNOLOGY\$/,
    noticeVCard: /./,
    noticeNoDsn: /./,
  };
  assert.deepEqual(keys.sort(), Object.keys(placeholder).sort());
  for (const lang of ["en", "de"]) {
    const messages = JSON.parse(readFileSync(join(root, "_locales", lang, "messages.json"), "utf8"));
    for (const key of keys) assert.match(messages[key].message, placeholder[key], `${lang}: ${key}`);
  }
});

test("script text ends where the tokenizer's script data states say", () => {
  const img = `<img src="${REMOTE}" moz-do-not-send="false">`;
  // '<!--<script>' hides one '</script>'; '<!-->' closes the escape at once.
  assert.deepEqual(remoteImagesToAttach(`<script><!--<script></script>${img}--></script>`), []);
  assert.deepEqual(remoteImagesToAttach(`<script><!--<script></script>${img}</script>`), []);
  assert.deepEqual(remoteImagesToAttach(`<script><!--></script>${img}`), [REMOTE]);
  assert.deepEqual(remoteImagesToAttach(`<script><!--<script></script>--></script>${img}`), [REMOTE]);
});

test("a delivery status notification request: a notice that refuses nothing", () => {
  const details = { to: ["bob@example.org"], body: "<p>hi</p>", deliveryStatusNotification: true };
  assert.deepEqual(composeNotices(details), [{ key: "noticeNoDsn", subs: [], refuses: false }]);
  assert.deepEqual(composeNotices({ ...details, deliveryStatusNotification: false }), []);
});

test("Thunderbird's own encryption or signature, and Attach My vCard: notices that refuse Send", () => {
  const details = { to: ["bob@example.org"], body: "<p>hi</p>", attachVCard: true,
    selectedEncryptionTechnology: { name: "OpenPGP", encryptBody: false, encryptSubject: false, signMessage: true } };
  assert.deepEqual(composeNotices(details), [
    { key: "noticeOwnSecurity", subs: ["OpenPGP"] },
    { key: "noticeVCard", subs: [] },
  ]);
  const off = { ...details, attachVCard: false, selectedEncryptionTechnology: { name: "S/MIME", encryptBody: false, signMessage: false } };
  assert.deepEqual(composeNotices(off), []);
  assert.deepEqual(composeNotices({ ...off, type: "redirect" }), [{ key: "noticeRedirect", subs: [] }]);
  assert.deepEqual(composeNotices({ ...off, type: "forward" }), []);
});
