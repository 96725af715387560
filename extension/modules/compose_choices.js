// The compose window's choices Thunderbird's own send would honour, as `encrypt` parameters.

import { startTags } from "./html_tags.js";

// Elements Thunderbird's "auto" delivery format (nsMsgCompose's body convertibility) treats as
// plain, with the attributes allowed on them: a smaller set than Thunderbird's, so a body it
// would send as plain text may go as both, never the other way round (no formatting is lost).
const ANY = null;
const PLAIN_TAGS = new Map([
  ["html", new Set()],
  ["head", new Set()],
  ["title", new Set()],
  ["meta", ANY],
  ["body", new Set()],
  ["p", new Set()],
  ["br", new Set()],
  ["tt", new Set()],
  ["pre", new Set(["class", "cols", "wrap"])],
  ["div", new Set(["class"])],
  ["blockquote", new Set(["type", "cite"])],
]);
// Thunderbird's own markers for signatures, quotes and forwards: plain text has them too.
const PLAIN_CLASSES = new Set(["moz-signature", "moz-cite-prefix", "moz-forward-container", "moz-quote-pre"]);

function plainTag(tag) {
  if (!PLAIN_TAGS.has(tag.name)) return false;
  const allowed = PLAIN_TAGS.get(tag.name);
  if (allowed === ANY) return true;
  for (const name of tag.attrs.keys()) if (!allowed.has(name)) return false;
  if (tag.name === "div" && !PLAIN_CLASSES.has(tag.attrs.get("class"))) return false;
  if (tag.name === "pre" && tag.attrs.has("class") && !PLAIN_CLASSES.has(tag.attrs.get("class"))) return false;
  if (tag.name === "blockquote" && tag.attrs.get("type") !== "cite") return false;
  return true;
}

/**
 * Whether an HTML body has no formatting, so Thunderbird's "auto" would send it as plain text.
 * @param {string} html
 * @returns {boolean}
 */
export function looksPlain(html) {
  for (const tag of startTags(html)) if (!plainTag(tag)) return false;
  return true;
}

/**
 * The `delivery_format` for compose details (ComposeDetails.deliveryFormat): null for a
 * message written as plain text (Thunderbird ignores the choice there), "auto" resolved the way
 * Thunderbird resolves it (plain text when nothing is formatted, else both), and "both" when
 * Thunderbird does not say (before 102), which is what was sent before.
 * @param {{isPlainText?: boolean, deliveryFormat?: string | null, body?: string}} details
 * @returns {"plaintext" | "html" | "both" | null}
 */
export function deliveryFormatOf(details) {
  if (details?.isPlainText === true) return null;
  const chosen = details?.deliveryFormat;
  if (chosen === "plaintext" || chosen === "html" || chosen === "both") return chosen;
  if (chosen === "auto") return looksPlain(details.body ?? "") ? "plaintext" : "both";
  return "both";
}
