// Patching a complete RFC 5322 message before messages.import: headers Thunderbird's Outbox needs.

/**
 * Split a message into its header block and body at the first empty line (CRLF or LF).
 * @param {string} message
 * @returns {{head: string, sep: string, body: string, eol: string}}
 */
export function splitMessage(message) {
  const m = /\r?\n\r?\n/.exec(message);
  if (!m) return { head: message, sep: "", body: "", eol: message.includes("\r\n") ? "\r\n" : "\n" };
  const eol = m[0].startsWith("\r\n") ? "\r\n" : "\n";
  return { head: message.slice(0, m.index), sep: m[0], body: message.slice(m.index + m[0].length), eol };
}

/**
 * The header fields of a header block, unfolded continuation lines kept with their field.
 * @param {string} head
 * @returns {{name: string, raw: string}[]}
 */
export function parseHeaders(head) {
  const fields = [];
  for (const line of head.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && fields.length > 0) {
      fields[fields.length - 1].raw += "\n" + line;
    } else if (line !== "") {
      const colon = line.indexOf(":");
      fields.push({ name: colon > 0 ? line.slice(0, colon).trim() : "", raw: line });
    }
  }
  return fields;
}

/**
 * The first value of a header (unfolded), or null.
 * @param {string} message
 * @param {string} name
 * @returns {string | null}
 */
export function getHeader(message, name) {
  const want = name.toLowerCase();
  for (const f of parseHeaders(splitMessage(message).head)) {
    if (f.name.toLowerCase() === want) {
      return f.raw.slice(f.raw.indexOf(":") + 1).replace(/\n[ \t]+/g, " ").trim();
    }
  }
  return null;
}

/**
 * Whether a message is an S/MIME envelope (RFC 8551 application/pkcs7-mime with smime-type
 * enveloped-data or authEnveloped-data), as the host's `encrypt` writes it: what the add-on
 * queues when Encrypt is on must be, whatever the host answered.
 * @param {string} message
 * @returns {boolean}
 */
export function isEnveloped(message) {
  if (typeof message !== "string") return false;
  const type = (getHeader(message, "Content-Type") ?? "").toLowerCase();
  return (
    /^application\/(x-)?pkcs7-mime\s*(;|$)/.test(type) &&
    /;\s*smime-type\s*=\s*"?(auth)?enveloped-data"?\s*(;|$)/.test(type)
  );
}

/**
 * A fresh Message-ID on the sender's domain (Thunderbird refuses to import a Message-ID the
 * folder already holds, so every import needs its own).
 * @param {string} sender  bare address or mailbox
 * @param {() => string} [random]  injectable for tests
 * @returns {string}
 */
export function newMessageId(sender, random = () => crypto.randomUUID()) {
  const at = sender.lastIndexOf("@");
  const domain = at >= 0 ? sender.slice(at + 1).replace(/[>\s].*$/, "") : "";
  return `<${random()}@${domain || "keypost.invalid"}>`;
}

/**
 * Set headers on a message: every field named in `set` is removed and written once, first in
 * the header block (X-Identity-Key / X-Account-Key must be present for the Outbox; position
 * does not matter to Thunderbird). Values containing line breaks are refused: they would
 * inject headers.
 * @param {string} message
 * @param {Record<string, string | null | undefined>} set  null/undefined removes the header
 * @returns {string}
 */
export function setHeaders(message, set) {
  const { head, body, eol } = splitMessage(message);
  const names = new Set(Object.keys(set).map((n) => n.toLowerCase()));
  const kept = parseHeaders(head).filter((f) => !names.has(f.name.toLowerCase()));
  const added = [];
  for (const [name, value] of Object.entries(set)) {
    if (value === null || value === undefined) continue;
    if (!/^[!-9;-~]+$/.test(name) || /[\r\n]/.test(value)) {
      throw new Error(`refusing to write header ${JSON.stringify(name)}`);
    }
    added.push(`${name}: ${value}`);
  }
  const lines = [...added, ...kept.map((f) => f.raw.split("\n").join(eol))];
  return lines.join(eol) + eol + eol + body;
}

/**
 * Make a host `message` ready for the Outbox: the identity and account keys Thunderbird needs
 * to pick the sender and SMTP server, and a Message-ID (kept when the host wrote one, so the
 * Sent copy and the sent message match; minted when absent).
 * @param {string} message
 * @param {{identityKey: string, accountKey: string, sender: string}} opts
 * @returns {string}
 */
export function prepareForOutbox(message, { identityKey, accountKey, sender }) {
  const messageId = getHeader(message, "Message-ID") || newMessageId(sender);
  return setHeaders(message, {
    "X-Identity-Key": identityKey,
    "X-Account-Key": accountKey,
    "Message-ID": messageId,
  });
}

/**
 * Bytes of a base64 string (attachments travel as base64 to the host).
 * @param {ArrayBuffer} buffer
 * @returns {string}
 */
export function bufferToBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  const step = 0x8000; // String.fromCharCode has an argument limit
  for (let i = 0; i < bytes.length; i += step) {
    binary += String.fromCharCode(...bytes.subarray(i, i + step));
  }
  return btoa(binary);
}

/**
 * In-Reply-To / References for a reply to a message whose headers are given as
 * messages.getFull returns them (lower-case names -> arrays of values). RFC 5322 3.6.4: the
 * parent's References (or its In-Reply-To) followed by its Message-ID.
 * @param {Record<string, string[]>} parent
 * @returns {Record<string, string>}
 */
export function replyHeaders(parent) {
  const first = (name) => (parent[name]?.[0] ?? "").replace(/\s+/g, " ").trim();
  const id = first("message-id");
  if (!/^<[^<>\s]+>$/.test(id)) return {};
  const earlier = first("references") || first("in-reply-to");
  const ids = [...earlier.matchAll(/<[^<>\s]+>/g)].map((m) => m[0]);
  return { "In-Reply-To": id, References: [...ids, id].join(" ") };
}
