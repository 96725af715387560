import { test } from "node:test";
import assert from "node:assert/strict";
import { ChunkAssembler, ChunkError } from "../modules/chunks.js";

function chunked(id, reply, size) {
  const text = JSON.stringify(reply);
  const parts = [];
  for (let i = 0; i < text.length; i += size) parts.push(text.slice(i, i + size));
  return parts.map((data, index) => ({ id, chunk: { index, count: parts.length, data } }));
}

test("a plain reply passes straight through", () => {
  const a = new ChunkAssembler();
  assert.deepEqual(a.feed({ id: 1, ok: true, result: 5 }), { done: true, reply: { id: 1, ok: true, result: 5 } });
});

test("chunks reassemble into the reply, interleaved with another id's plain reply", () => {
  const big = { id: 7, ok: true, result: { message: "x".repeat(5000) + "ü€" } };
  const frames = chunked(7, big, 777);
  assert.ok(frames.length > 5);
  const a = new ChunkAssembler();
  for (const f of frames.slice(0, -1)) assert.deepEqual(a.feed(f), { done: false });
  assert.equal(a.feed({ id: 8, ok: true, result: 1 }).reply.id, 8);
  assert.deepEqual(a.feed(frames.at(-1)), { done: true, reply: big });
  assert.deepEqual(a.reset(), []);
});

test("out-of-order, count-changing and malformed chunks fail the request", () => {
  const frames = chunked("r", { id: "r", ok: true, result: "y".repeat(100) }, 10);
  const a = new ChunkAssembler();
  assert.throws(() => a.feed(frames[1]), ChunkError);
  a.feed(frames[0]);
  assert.throws(() => a.feed({ ...frames[1], chunk: { ...frames[1].chunk, count: 99 } }), ChunkError);
  assert.throws(() => a.feed({ id: 1, chunk: { index: 0, count: 1, data: 5 } }), ChunkError);
  assert.throws(() => a.feed({ id: 1, chunk: { index: 0, count: 1, data: "{not json" } }), ChunkError);
});

test("reset drops partial replies and names them", () => {
  const a = new ChunkAssembler();
  a.feed(chunked(3, { id: 3, ok: true, result: "z".repeat(50) }, 10)[0]);
  assert.deepEqual(a.reset(), ["3"]);
});

test("a chunked reply whose text names another request fails instead of answering it", () => {
  const a = new ChunkAssembler();
  const [frame] = chunked(4, { id: 5, ok: true, result: "for 4, labelled 5" }, 1000);
  assert.throws(() => a.feed(frame), ChunkError);
  assert.deepEqual(a.reset(), []);
});
