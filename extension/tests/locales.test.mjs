import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const load = (lang) => JSON.parse(readFileSync(join(root, "_locales", lang, "messages.json"), "utf8"));

function sources(dir) {
  return readdirSync(join(root, dir)).filter((f) => /\.(js|html|json)$/.test(f)).map((f) => readFileSync(join(root, dir, f), "utf8"));
}

test("en and de have the same keys and the same placeholders", () => {
  const en = load("en");
  const de = load("de");
  assert.deepEqual(Object.keys(de).sort(), Object.keys(en).sort());
  for (const k of Object.keys(en)) {
    assert.deepEqual(Object.keys(de[k].placeholders ?? {}), Object.keys(en[k].placeholders ?? {}), k);
  }
});

test("every message key the add-on uses exists", () => {
  const en = load("en");
  const text = [...sources("."), ...sources("modules"), ...sources("popup"), ...sources("options")].join("\n");
  const used = new Set();
  for (const m of text.matchAll(/__MSG_(\w+)__/g)) used.add(m[1]);
  for (const m of text.matchAll(/\bmsg\("(\w+)"/g)) used.add(m[1]);
  for (const m of text.matchAll(/data-i18n(?:-placeholder)?="(\w+)"/g)) used.add(m[1]);
  // Keys a pure module hands back for the page to show (notices, anchorVerdict, AnchorError).
  for (const m of text.matchAll(/\bkey: "(\w+)"|\bAnchorError\("(\w+)"/g)) used.add(m[1] ?? m[2]);
  assert.ok(used.size > 20);
  for (const k of used) assert.ok(k in en, `missing message ${k}`);
  for (const s of ["pending", "gateway", "genuine", "no_container", "invalid", "invalid_address", "error"]) {
    assert.ok(`status_${s}` in en, s);
  }
});

test("every error the user can be shown has a text of its own (error_<name>)", () => {
  const protocol = readFileSync(join(root, "..", "PROTOCOL.md"), "utf8");
  const names = [...protocol.matchAll(/^\| \d+ \| `(\w+)` \|/gm)].map((m) => m[1]);
  assert.ok(names.includes("no_valid_container") && names.length >= 13, names.join(","));
  // Raised by the add-on itself (modules/host.js): code 0.
  names.push("host_unavailable", "timeout", "bad_chunk");
  for (const lang of ["en", "de"]) {
    const messages = load(lang);
    for (const name of names) assert.ok(`error_${name}` in messages, `${lang}: error_${name}`);
  }
});
