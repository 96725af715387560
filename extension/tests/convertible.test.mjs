import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { convertibility } from "../modules/convertible.js";

// Bodies and what the real Thunderbird (140, 153) says of each; tests/e2e re-checks the file
// against it. Among them: every element kind, the attributes that matter, links whose text is
// or is not their address, Thunderbird's own "moz-" markers, and whole editor documents.
const { vectors } = JSON.parse(
  readFileSync(new URL("../../tests/data/thunderbird_convertibility.json", import.meta.url), "utf8"),
);

test("convertibility: Thunderbird's verdict for every recorded body", () => {
  assert.ok(vectors.length > 200);
  const wrong = vectors
    .map(([html, verdict]) => [html, verdict, convertibility(html)])
    .filter(([, verdict, ours]) => ours !== verdict);
  assert.deepEqual(wrong, []);
});
