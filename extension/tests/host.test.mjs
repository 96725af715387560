import { test } from "node:test";
import assert from "node:assert/strict";
import { HostClient, HostError } from "../modules/host.js";

// A fake native port: records posted requests; the test plays the host.
function fakePort() {
  const port = {
    sent: [],
    msgListeners: [],
    discListeners: [],
    disconnected: false,
    onMessage: { addListener: (f) => port.msgListeners.push(f) },
    onDisconnect: { addListener: (f) => port.discListeners.push(f) },
    postMessage: (m) => port.sent.push(m),
    disconnect: () => (port.disconnected = true),
    emit: (frame) => port.msgListeners.forEach((f) => f(frame)),
    die: (error) => port.discListeners.forEach((f) => f({ error })),
  };
  return port;
}

test("requests get distinct ids and replies resolve the right promise", async () => {
  const ports = [];
  const client = new HostClient(() => (ports.push(fakePort()), ports.at(-1)));
  const a = client.request("ping", { protocol: 1 });
  const b = client.request("status");
  const [p] = ports;
  assert.equal(ports.length, 1, "one port for both requests");
  assert.deepEqual(p.sent.map((m) => m.action), ["ping", "status"]);
  assert.notEqual(p.sent[0].id, p.sent[1].id);
  p.emit({ id: p.sent[1].id, ok: true, result: { configured: false } });
  p.emit({ id: p.sent[0].id, ok: false, error: { code: 3, name: "version_mismatch", message: "v" } });
  assert.deepEqual(await b, { configured: false });
  await assert.rejects(a, (e) => e instanceof HostError && e.code === 3 && e.codeName === "version_mismatch");
  client.close();
});

test("a chunked reply resolves once complete", async () => {
  const port = fakePort();
  const client = new HostClient(() => port);
  const pending = client.request("encrypt", {});
  const id = port.sent[0].id;
  const text = JSON.stringify({ id, ok: true, result: { message: "m".repeat(3000) } });
  const n = 4;
  const size = Math.ceil(text.length / n);
  for (let i = 0; i < n; i++) port.emit({ id, chunk: { index: i, count: n, data: text.slice(i * size, (i + 1) * size) } });
  assert.equal((await pending).message.length, 3000);
  client.close();
});

test("a dying host fails outstanding requests and the next request reconnects", async () => {
  const ports = [];
  const client = new HostClient(() => (ports.push(fakePort()), ports.at(-1)));
  const a = client.request("lookup", {});
  ports[0].die({ message: "No such native application org.keypost.host" });
  await assert.rejects(a, (e) => e.codeName === "host_unavailable" && /No such native application/.test(e.message));
  const b = client.request("status");
  assert.equal(ports.length, 2);
  ports[1].emit({ id: ports[1].sent[0].id, ok: true, result: 1 });
  assert.equal(await b, 1);
  client.close();
});

test("a bad frame (id null) fails every outstanding request instead of hanging", async () => {
  const port = fakePort();
  const client = new HostClient(() => port);
  const a = client.request("status");
  port.emit({ id: null, ok: false, error: { code: 1, name: "bad_request", message: "not JSON" } });
  await assert.rejects(a, (e) => e.code === 1);
  client.close();
});

test("requests time out", async () => {
  const port = fakePort();
  const client = new HostClient(() => port, { timeoutMs: 5 });
  await assert.rejects(client.request("status"), (e) => e.codeName === "timeout");
  client.close();
});

const tick = () => new Promise((r) => setTimeout(r, 0));

test("with a hello, every new port pings first and requests wait for its answer", async () => {
  const ports = [];
  const hello = { action: "ping", params: { protocol: 1, version: "0.1.0" } };
  const client = new HostClient(() => (ports.push(fakePort()), ports.at(-1)), { hello });
  const a = client.request("status");
  const [p] = ports;
  assert.deepEqual(p.sent.map((m) => m.action), ["ping"], "nothing else before the host answered");
  assert.deepEqual(p.sent[0].params, hello.params);
  p.emit({ id: p.sent[0].id, ok: true, result: { protocol: 1, host_version: "0.1.0" } });
  await tick();
  assert.deepEqual(p.sent.map((m) => m.action), ["ping", "status"]);
  p.emit({ id: p.sent[1].id, ok: true, result: "s" });
  assert.equal(await a, "s");
  const b = client.request("lookup"); // same port: no second ping
  await tick();
  assert.deepEqual(p.sent.map((m) => m.action), ["ping", "status", "lookup"]);
  p.emit({ id: p.sent[2].id, ok: true, result: "l" });
  assert.equal(await b, "l");
  client.close();
});

test("a host of another protocol version gets no request; the next request tries a new port", async () => {
  const ports = [];
  const hello = { action: "ping", params: { protocol: 1 } };
  const client = new HostClient(() => (ports.push(fakePort()), ports.at(-1)), { hello, protocol: 1 });
  const a = client.request("encrypt", { secret: "x" });
  ports[0].emit({ id: ports[0].sent[0].id, ok: false,
    error: { code: 3, name: "version_mismatch", message: "the add-on speaks protocol 1, this host speaks 2" } });
  await assert.rejects(a, (e) => e.code === 3 && /speaks protocol/.test(e.message));
  assert.deepEqual(ports[0].sent.map((m) => m.action), ["ping"]);
  assert.equal(ports[0].disconnected, true);
  // An old host that answers ping without complaint but with another protocol is refused too.
  const b = client.request("encrypt", {});
  assert.equal(ports.length, 2);
  ports[1].emit({ id: ports[1].sent[0].id, ok: true, result: { protocol: 0, host_version: "0.0.1" } });
  await assert.rejects(b, (e) => e.codeName === "version_mismatch" && /0\.0\.1/.test(e.message));
  assert.deepEqual(ports[1].sent.map((m) => m.action), ["ping"]);
  client.close();
});

/** An encrypt and a lookup outstanding on one port. */
function twoRequests() {
  const port = fakePort();
  const client = new HostClient(() => port, { timeoutMs: 50 });
  const a = client.request("encrypt", {});
  const b = client.request("lookup", {});
  return { port, client, a, b, ida: port.sent[0].id, idb: port.sent[1].id };
}

test("a success reply naming no request (id null or missing) resolves nothing", async () => {
  const { port, client, a, b, idb } = twoRequests();
  // Only an error may go to every outstanding request (PROTOCOL.md: id null = unreadable frame).
  port.emit({ id: null, ok: true, result: { message: "not for you" } });
  port.emit({ ok: true, result: { message: "nor for you" } });
  port.emit({ id: idb, ok: true, result: "l" });
  assert.equal(await b, "l");
  await assert.rejects(a, (e) => e instanceof HostError);
  client.close();
});

test("a chunked reply whose text names another request settles only its own", async () => {
  const { port, client, a, b, ida, idb } = twoRequests();
  const text = JSON.stringify({ id: idb, ok: true, result: { message: "a's message" } });
  port.emit({ id: ida, chunk: { index: 0, count: 1, data: text } });
  await assert.rejects(a, (e) => e.codeName === "bad_chunk");
  port.emit({ id: idb, ok: true, result: "l" });
  assert.equal(await b, "l");
  client.close();
});

test("a timed-out request drops the stuck host: everything outstanding fails, the next request starts a new one", async () => {
  const ports = [];
  const timers = [];
  // Timers fired by hand: the encrypt times out while the lookup queued behind it has not yet.
  const client = new HostClient(() => (ports.push(fakePort()), ports.at(-1)), {
    setTimer: (fn) => (timers.push(fn), timers.length),
    clearTimer: () => {},
  });
  const a = client.request("encrypt", {});
  const b = client.request("lookup", {});
  timers[0]();
  await assert.rejects(a, (e) => e.code === 0 && e.codeName === "timeout" && /encrypt/.test(e.message));
  await assert.rejects(b, (e) => e.code === 0 && e.codeName === "timeout");
  assert.equal(ports[0].disconnected, true, "the stuck host's port is closed, so the process ends");
  const c = client.request("status");
  assert.equal(ports.length, 2, "a fresh host for the next request");
  assert.deepEqual(ports[1].sent.map((m) => m.action), ["status"]);
  ports[1].emit({ id: ports[1].sent[0].id, ok: true, result: "s" });
  assert.equal(await c, "s");
  // A late answer from the old host (had it not gone yet) is ignored.
  ports[0].emit({ id: ports[0].sent[1].id, ok: true, result: "late" });
  client.close();
});

test("a hello that times out drops its port, and the waiting request fails with the timeout", async () => {
  const ports = [];
  const client = new HostClient(() => (ports.push(fakePort()), ports.at(-1)), {
    timeoutMs: 5,
    hello: { action: "ping", params: { protocol: 1 } },
  });
  await assert.rejects(client.request("status"), (e) => e.codeName === "timeout" && /ping/.test(e.message));
  assert.equal(ports[0].disconnected, true);
  assert.deepEqual(ports[0].sent.map((m) => m.action), ["ping"]);
  client.close();
});
