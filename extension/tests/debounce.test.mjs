import { test } from "node:test";
import assert from "node:assert/strict";
import { keyedDebounce } from "../modules/debounce.js";

test("keyedDebounce runs once per key after the last schedule", async () => {
  const calls = [];
  const d = keyedDebounce((k) => calls.push(k), 20);
  d.schedule(1);
  d.schedule(1);
  d.schedule(2);
  d.schedule(3);
  d.cancel(3);
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(calls.sort(), [1, 2]);
});
