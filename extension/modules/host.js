// The native messaging client: one connectNative port, request ids, chunked replies (PROTOCOL.md).

import { ChunkAssembler, ChunkError } from "./chunks.js";

export const HOST_NAME = "org.keypost.host";
export const PROTOCOL_VERSION = 1;

/** A failed request: `code`/`name` are PROTOCOL.md's stable error codes (0 = add-on side). */
export class HostError extends Error {
  /**
   * @param {{code?: number, name?: string, message?: string, details?: any}} error
   */
  constructor(error) {
    super(error?.message ?? "host error");
    this.code = error?.code ?? 0;
    this.codeName = error?.name ?? "host_unavailable";
    this.details = error?.details ?? null;
  }
}

/**
 * Talks to the host over one port opened lazily and reopened after it closes.
 * `connect` is `() => browser.runtime.connectNative(HOST_NAME)` in the add-on and a fake in tests.
 */
export class HostClient {
  /**
   * `hello`: a request (PROTOCOL.md `ping`) sent first on every new port; other requests wait
   * for its answer and fail with its error, so a host of another protocol version never gets
   * one. `protocol`: the version its result must name (default PROTOCOL_VERSION).
   * @param {() => any} connect
   * @param {{timeoutMs?: number, setTimer?: typeof setTimeout, clearTimer?: typeof clearTimeout,
   *   hello?: {action: string, params: object}, protocol?: number}} [opts]
   */
  constructor(connect, opts = {}) {
    this.connect = connect;
    this.hello = opts.hello ?? null;
    this.protocol = opts.protocol ?? PROTOCOL_VERSION;
    /** The current port's hello answer (null without a hello or before a port is open). */
    this.ready = null;
    this.timeoutMs = opts.timeoutMs ?? 120000;
    // Wrapped: called as methods, the bare globals would throw "illegal invocation".
    this.setTimer = opts.setTimer ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = opts.clearTimer ?? ((t) => clearTimeout(t));
    this.port = null;
    this.nextId = 1;
    /** @type {Map<string, {resolve: Function, reject: Function, timer: any}>} */
    this.pending = new Map();
    this.chunks = new ChunkAssembler();
  }

  ensurePort() {
    if (this.port) return this.port;
    const port = this.connect();
    this.port = port;
    port.onMessage.addListener((frame) => this.onFrame(frame));
    port.onDisconnect.addListener((p) => this.onDisconnect(port, p?.error ?? port.error));
    this.ready = this.hello ? this.greet(port) : null;
    return port;
  }

  /** Send the hello on a new port; on any failure drop the port so the next request retries. */
  greet(port) {
    const ready = this.send(this.hello.action, this.hello.params).then((result) => {
      if (result?.protocol !== this.protocol) {
        const theirs = `${result?.protocol ?? "?"} (keypost ${result?.host_version ?? "?"})`;
        throw new HostError({
          code: 3,
          name: "version_mismatch",
          message: `the keypost host speaks protocol ${theirs}, this add-on ${this.protocol}: update both to the same keypost version`,
        });
      }
      return result;
    });
    ready.catch(() => {
      if (this.port !== port) return;
      this.port = null;
      this.ready = null;
      port.disconnect();
    });
    return ready;
  }

  /**
   * Send one request; resolves with `result`, rejects with HostError.
   * @param {string} action
   * @param {object} [params]
   * @returns {Promise<any>}
   */
  async request(action, params = {}) {
    for (;;) {
      let port;
      try {
        port = this.ensurePort();
      } catch (e) {
        this.port = null;
        throw new HostError({ code: 0, name: "host_unavailable", message: String(e?.message ?? e) });
      }
      // Without a hello nothing is awaited: the request is posted before this call returns.
      if (this.ready) await this.ready; // rejects with the hello's error: nothing is sent
      if (this.port === port) return this.send(action, params);
      // The port closed meanwhile: the next one says hello first, again.
    }
  }

  /** Post one request on the current port (no hello wait); resolves with `result`. */
  send(action, params) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const key = JSON.stringify(id);
      let port = null;
      const timer = this.setTimer(() => this.timedOut(id, port, action), this.timeoutMs);
      this.pending.set(key, { resolve, reject, timer });
      try {
        port = this.ensurePort();
        port.postMessage({ id, action, params });
      } catch (e) {
        this.clearTimer(timer);
        this.pending.delete(key);
        this.port = null;
        reject(new HostError({ code: 0, name: "host_unavailable", message: String(e?.message ?? e) }));
      }
    });
  }

  onFrame(frame) {
    let done;
    try {
      done = this.chunks.feed(frame);
    } catch (e) {
      if (e instanceof ChunkError) {
        this.settle(frame?.id, null, { code: 0, name: "bad_chunk", message: e.message });
        return;
      }
      throw e;
    }
    if (!done.done) return;
    const reply = done.reply;
    if (reply?.ok === true) this.settle(reply.id, reply.result, null);
    else this.settle(reply?.id, null, reply?.error ?? { message: "malformed reply from the host" });
  }

  settle(id, result, error) {
    const key = JSON.stringify(id ?? null);
    const waiter = this.pending.get(key);
    if (!waiter) {
      // id null: the host could not read a frame; fail everything outstanding rather than hang.
      // Only an error: a success that names no request answers none of them.
      if (error && (id === null || id === undefined)) {
        for (const k of [...this.pending.keys()]) this.settle(JSON.parse(k), null, error);
      }
      return;
    }
    this.pending.delete(key);
    this.clearTimer(waiter.timer);
    if (error) waiter.reject(new HostError(error));
    else waiter.resolve(result);
  }

  /**
   * Request `id` got no answer in time. The host answers in order, so a host stuck on one
   * request would keep every later one waiting just as long: close its port (the process
   * ends) and fail everything outstanding on it; the next request starts a fresh host.
   */
  timedOut(id, port, action) {
    const error = {
      code: 0,
      name: "timeout",
      message: `the keypost host did not answer ${action} in time and was stopped; it starts again with the next request`,
    };
    if (port === null || this.port !== port) {
      this.settle(id, null, error); // its port is gone already
      return;
    }
    this.port = null;
    port.disconnect(); // fires no onDisconnect on this side
    this.abandon(error);
  }

  onDisconnect(port, err) {
    if (this.port === port) this.port = null;
    const message = err?.message
      ? `the keypost host stopped: ${err.message}`
      : "the keypost host is not installed or stopped (run `keypost install thunderbird`)";
    this.abandon({ code: 0, name: "host_unavailable", message });
  }

  /** The port is gone: fail every outstanding request with `error`. */
  abandon(error) {
    this.chunks.reset();
    for (const key of [...this.pending.keys()]) this.settle(JSON.parse(key), null, error);
  }

  /** Close the port (tests, shutdown). */
  close() {
    if (this.port) {
      const port = this.port;
      this.port = null;
      port.disconnect();
      this.onDisconnect(port, null);
    }
  }
}
