import { test } from "node:test";
import assert from "node:assert/strict";
import { deliveryFormatOf, looksPlain } from "../modules/compose_choices.js";

const HEAD = '<!DOCTYPE html><html><head><meta http-equiv="content-type" content="text/html; charset=UTF-8"></head>';

test("looksPlain: only what Thunderbird's converter calls plain; anything else is formatted", () => {
  const plain = [
    `${HEAD}<body><p>Hello Bob,</p><p>see you<br>Alice</p></body></html>`,
    `${HEAD}<body>Hi<br></body></html>`,
    `${HEAD}<body><p>a &amp; b &lt; c</p><pre class="moz-signature" cols="72">-- \nAlice</pre></body></html>`,
    `${HEAD}<body><div class="moz-cite-prefix">Bob wrote:</div><blockquote type="cite">old</blockquote></body></html>`,
    "",
  ];
  for (const html of plain) assert.equal(looksPlain(html), true, html);
  const formatted = [
    `${HEAD}<body><p>Hello <b>Bob</b></p></body></html>`,
    `${HEAD}<body><p style="color: red">Hello</p></body></html>`,
    `${HEAD}<body text="#000000" bgcolor="#FFFFFF"><p>Hi</p></body></html>`,
    `${HEAD}<body><img src="data:image/png;base64,AAAA"></body></html>`,
    `${HEAD}<body><a href="https://e.example/">link</a></body></html>`,
    `${HEAD}<body><div>x</div></body></html>`,
    `${HEAD}<body><blockquote>quoted, not cited</blockquote></body></html>`,
    `${HEAD}<body><ul><li>x</li></ul></body></html>`,
    `${HEAD}<body><table><tr><td>x</td></tr></table></body></html>`,
  ];
  for (const html of formatted) assert.equal(looksPlain(html), false, html);
});

test("deliveryFormatOf: the user's choice; auto resolved as Thunderbird would; none for plain text", () => {
  const plainBody = `${HEAD}<body><p>Hi</p></body></html>`;
  const richBody = `${HEAD}<body><p><i>Hi</i></p></body></html>`;
  const html = (deliveryFormat, body = richBody) => ({ isPlainText: false, deliveryFormat, body });
  assert.equal(deliveryFormatOf(html("plaintext")), "plaintext");
  assert.equal(deliveryFormatOf(html("html")), "html");
  assert.equal(deliveryFormatOf(html("both")), "both");
  assert.equal(deliveryFormatOf(html("auto")), "both");
  assert.equal(deliveryFormatOf(html("auto", plainBody)), "plaintext");
  assert.equal(deliveryFormatOf(html(undefined)), "both"); // Thunderbird before 102: as before
  assert.equal(deliveryFormatOf({ isPlainText: true, deliveryFormat: null }), null);
});
