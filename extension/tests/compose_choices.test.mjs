import { test } from "node:test";
import assert from "node:assert/strict";
import { deliveryFormatOf } from "../modules/compose_choices.js";

const HEAD = '<!DOCTYPE html>\n<html><head>\n<meta http-equiv="content-type" content="text/html; charset=UTF-8"></head>';

test("deliveryFormatOf: the user's choice; auto resolved as Thunderbird would; none for plain text", () => {
  const richBody = `${HEAD}<body><p><i>Hi</i></p></body></html>`;
  const html = (deliveryFormat, body = richBody) => ({ isPlainText: false, deliveryFormat, body });
  assert.equal(deliveryFormatOf(html("plaintext")), "plaintext");
  assert.equal(deliveryFormatOf(html("html")), "html");
  assert.equal(deliveryFormatOf(html("both")), "both");
  assert.equal(deliveryFormatOf(html(undefined)), "both"); // Thunderbird before 102: as before
  assert.equal(deliveryFormatOf({ isPlainText: true, deliveryFormat: null }), null);
  // Auto: plain text only for a body Thunderbird calls plain, else both (never HTML only).
  // Each verdict as Thunderbird 140/153 gave it (tests/data/thunderbird_convertibility.json).
  const auto = (body) => deliveryFormatOf(html("auto", `${HEAD}<body>${body}</body></html>`));
  assert.equal(auto("<p>Hi</p>"), "plaintext");
  assert.equal(auto('<div>Hi</div><p><a href="https://e.example/">https://e.example/</a></p>'), "plaintext");
  assert.equal(auto('<p>Hi</p><div class="moz-signature">-- <br>Alice</div>'), "plaintext");
  assert.equal(auto("<p><i>Hi</i></p>"), "both"); // altering
  assert.equal(auto("<pre>Hi</pre>"), "both"); // altering: the editor's "Preformat"
  assert.equal(auto("<ul><li>Hi</li></ul>"), "both"); // yes
  assert.equal(auto('<p style="color: red">Hi</p>'), "both"); // no
  assert.equal(deliveryFormatOf(html("auto", "")), "plaintext");
});
