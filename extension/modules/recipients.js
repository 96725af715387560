// Recipient parsing and normalising: compose fields -> unique, lower-cased-domain addresses.

/**
 * Split one compose recipient string into bare addresses, reading it as an RFC 5322 address
 * list the way the host does (host/keypost/host/address_list.py; the shared cases are in
 * tests/data/address_lists.json): commas outside quotes and angle brackets separate
 * mailboxes ("Doe, Jane" <j@x> is one); a group (`Team: a@x, b@y;`) gives its members and
 * an empty group nothing; a ";" outside a group separates like a comma. A ":" after an
 * address is no group (the piece stays whole, an invalid address). A string holding CR, LF
 * or NUL is not split: it comes back whole, so it is refused as one invalid address.
 * @param {string} text
 * @returns {string[]}
 */
export function splitAddressList(text) {
  const s = text.trim();
  if (/[\r\n\0]/.test(s)) return [s];
  const out = [];
  let current = "";
  let quoted = false;
  let inGroup = false;
  let hasAddress = false;
  let angle = 0;
  for (let i = 0; i < s.length; i++) {
    let ch = s[i];
    if (quoted) {
      if (ch === "\\") ch += s[++i] ?? "";
      else if (ch === '"') quoted = false;
    } else if (ch === '"') quoted = true;
    else if (ch === "<") {
      angle++;
      hasAddress = true;
    } else if (ch === ">") angle = Math.max(0, angle - 1);
    else if (angle === 0 && ch === "@") hasAddress = true;
    else if (angle === 0 && (ch === "," || ch === ";")) {
      out.push(current);
      current = "";
      hasAddress = false;
      inGroup = inGroup && ch === ",";
      continue;
    } else if (angle === 0 && ch === ":" && !inGroup && !hasAddress && current.trim() !== "") {
      current = ""; // the group's name: not a recipient
      inGroup = true;
      continue;
    }
    current += ch;
  }
  out.push(current);
  return out.map(extractAddress).filter((a) => a !== "");
}

/**
 * The address part of one mailbox: the last <...> outside quotes, else the whole text.
 * @param {string} mailbox
 * @returns {string}
 */
export function extractAddress(mailbox) {
  const s = mailbox.trim();
  if (s === "") return "";
  let quoted = false;
  let start = -1;
  let found = "";
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    if (ch === "\\" && quoted) {
      i++;
      continue;
    }
    if (ch === '"') quoted = !quoted;
    else if (!quoted && ch === "<") start = i;
    else if (!quoted && ch === ">" && start >= 0) {
      found = s.slice(start + 1, i);
      start = -1;
    }
  }
  return (found || s).trim();
}

/**
 * Normalise an address for matching: trim, lower-case the domain (local parts keep their
 * case, as the host and directory treat them), strip a trailing dot. Returns "" when the text
 * is not shaped like local@domain.
 * @param {string} address
 * @returns {string}
 */
export function normalizeAddress(address) {
  const s = address.trim();
  const at = s.lastIndexOf("@");
  // Control characters as the host's parse_address refuses them (a NUL is no \s)
  if (at <= 0 || at === s.length - 1 || /[\s\x00-\x1f]/.test(s)) return "";
  const domain = s.slice(at + 1).replace(/\.$/, "").toLowerCase();
  if (!domain.includes(".") || domain.startsWith(".") || domain.includes("..")) return "";
  return `${s.slice(0, at)}@${domain}`;
}

/**
 * Collect the recipients of compose details ({to, cc, bcc}; each a string or an array of
 * strings / address book references). Address book references (objects) cannot be resolved
 * without extra permissions: they are returned in `unresolved` so the caller can fail closed.
 * @param {{to?: unknown, cc?: unknown, bcc?: unknown}} details
 * @returns {{to: string[], cc: string[], bcc: string[], all: string[], invalid: string[], unresolved: number}}
 */
export function collectRecipients(details) {
  const seen = new Set();
  const result = { to: [], cc: [], bcc: [], all: [], invalid: [], unresolved: 0 };
  for (const field of ["to", "cc", "bcc"]) {
    let values = details[field] ?? [];
    if (!Array.isArray(values)) values = [values];
    for (const value of values) {
      if (typeof value !== "string") {
        result.unresolved++;
        continue;
      }
      for (const raw of splitAddressList(value)) {
        const norm = normalizeAddress(raw);
        if (norm === "") {
          result.invalid.push(raw);
          continue;
        }
        const key = norm.toLowerCase();
        if (seen.has(key)) continue;
        seen.add(key);
        result[field].push(norm);
        result.all.push(norm);
      }
    }
  }
  return result;
}

/**
 * The message key saying why `raw` (one of collectRecipients' `invalid`) is no recipient.
 * Thunderbird hands an address book list to onBeforeSend as its name, unexpanded ("Team" or
 * "Team <Team>"), and expands it only in its own send: text without an "@" is most likely
 * one, and "not a valid mail address" left the user guessing.
 * @param {string} raw
 * @returns {string}
 */
export function invalidReason(raw) {
  return raw.includes("@") ? "reasonInvalidAddress" : "reasonNoAtSign";
}

/**
 * The newsgroups of compose details (`newsgroups` and `followupTo`; each a string, possibly
 * comma-separated, or an array of strings). Encrypted posting is not supported: a non-empty
 * result means the send must be refused rather than the groups silently dropped.
 * @param {{newsgroups?: unknown, followupTo?: unknown}} details
 * @returns {string[]}
 */
export function collectNewsgroups(details) {
  const groups = [];
  for (const field of ["newsgroups", "followupTo"]) {
    let values = details[field] ?? [];
    if (!Array.isArray(values)) values = [values];
    for (const value of values) {
      for (const group of String(value).split(",")) {
        const name = group.trim();
        if (name !== "" && !groups.includes(name)) groups.push(name);
      }
    }
  }
  return groups;
}

/**
 * A stable key for a recipient set, used to skip lookups when nothing changed.
 * @param {string} sender
 * @param {string[]} recipients
 * @returns {string}
 */
export function recipientsKey(sender, recipients) {
  return [sender.toLowerCase(), ...recipients.map((r) => r.toLowerCase()).sort()].join("\n");
}
