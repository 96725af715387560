// Reassembly of chunked host replies (PROTOCOL.md "Chunked replies"): pure, no browser APIs.

/** Raised when chunk frames arrive out of order or inconsistent; the reply is lost. */
export class ChunkError extends Error {}

/**
 * Collects chunk frames per request id and yields the complete reply once the last one is in.
 * Frames of one reply are consecutive and in order (the host guarantees it); anything else is
 * a protocol violation and fails that request instead of producing a corrupt message.
 */
export class ChunkAssembler {
  constructor() {
    /** @type {Map<string, {count: number, parts: string[]}>} */
    this.pending = new Map();
  }

  /**
   * Feed one frame from the host.
   * @param {any} frame
   * @returns {{done: false} | {done: true, reply: any}}
   * @throws {ChunkError}
   */
  feed(frame) {
    if (frame === null || typeof frame !== "object" || !("chunk" in frame)) {
      return { done: true, reply: frame };
    }
    const key = JSON.stringify(frame.id ?? null);
    const chunk = frame.chunk;
    if (
      chunk === null ||
      typeof chunk !== "object" ||
      !Number.isInteger(chunk.index) ||
      !Number.isInteger(chunk.count) ||
      chunk.count < 1 ||
      typeof chunk.data !== "string"
    ) {
      this.pending.delete(key);
      throw new ChunkError(`malformed chunk for request ${key}`);
    }
    let entry = this.pending.get(key);
    if (chunk.index === 0) {
      entry = { count: chunk.count, parts: [] };
      this.pending.set(key, entry);
    }
    if (!entry || entry.count !== chunk.count || entry.parts.length !== chunk.index) {
      this.pending.delete(key);
      throw new ChunkError(`chunk ${chunk.index} of request ${key} out of order`);
    }
    entry.parts.push(chunk.data);
    if (entry.parts.length < entry.count) return { done: false };
    this.pending.delete(key);
    let reply;
    try {
      reply = JSON.parse(entry.parts.join(""));
    } catch (e) {
      throw new ChunkError(`chunked reply for request ${key} is not JSON: ${e.message}`);
    }
    // The joined text is a whole reply with its own id: it must be the chunks' request.
    if (JSON.stringify(reply?.id ?? null) !== key) {
      throw new ChunkError(`chunked reply for request ${key} names request ${JSON.stringify(reply?.id ?? null)}`);
    }
    return { done: true, reply };
  }

  /** Drop partial replies (the port closed). @returns {string[]} the ids that were pending */
  reset() {
    const ids = [...this.pending.keys()];
    this.pending.clear();
    return ids;
  }
}
