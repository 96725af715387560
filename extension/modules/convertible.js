// Thunderbird's verdict on whether an HTML body converts to plain text without loss.
//
// In the "auto" send format Thunderbird sends plain text only when its editor's document is
// "plain" (MsgComposeCommands.js determineSendFormat: nsIMsgCompose.bodyConvertible() ==
// nsIMsgCompConvertible.Plain), else both. The verdict is the worst over every element of the
// document (nsMsgCompose's node tree walk), each judged by its name and a few attributes
// (nsMsgCompose::TagConvertible). This is that rule, read off Thunderbird 140 and 153 and
// checked against them (tests/data/thunderbird_convertibility.json). It reads the body the
// compose API returns, a serialization of that very document, so each start tag in it is one
// element, and an element's first child starts right after its start tag.

import { attributeValue, startTags } from "./html_tags.js";

// nsIMsgCompConvertible, best first.
const VERDICTS = ["plain", "yes", "altering", "no"];
const [PLAIN, YES, ALTERING, NO] = [0, 1, 2, 3];

const PLAIN_TAGS = new Set(["br", "p", "tt", "html", "head", "meta", "title", "div", "span"]);
const YES_TAGS = new Set(["ul", "ol", "li", "dl", "dt", "dd"]);
// b, i, u, em, strong and code are "altering" with the default converter.html2txt.structs
// (true) and "no" without it: either way not plain, so the pref (unreadable here) is moot.
const ALTERING_TAGS = new Set(["h1", "h2", "h3", "h4", "h5", "h6", "hr", "pre", "em", "strong", "code", "b", "i", "u"]);

const lower = (s) => s.replace(/[A-Z]+/g, (m) => m.toLowerCase());

/**
 * The DOM nodeValue of the first child of an element whose start tag ends at `at`: null when
 * it has no child, "" for an element child (Thunderbird compares its null value as "").
 */
function firstChildValue(html, at) {
  if (at >= html.length || html.startsWith("</", at)) return null;
  if (html.startsWith("<!--", at)) {
    // A comment's nodeValue is its text; "<!-->" and "<!--->" are empty comments.
    if (html.startsWith(">", at + 4) || html.startsWith("->", at + 4)) return "";
    const end = /--!?>/g;
    end.lastIndex = at + 4;
    const found = end.exec(html);
    return html.slice(at + 4, found ? found.index : html.length);
  }
  if (html[at] === "<" && /[A-Za-z]/.test(html[at + 1] ?? "")) return "";
  const next = html.indexOf("<", at + 1);
  return attributeValue(next < 0 ? html.slice(at) : html.slice(at, next));
}

/** One element's verdict (nsMsgCompose::TagConvertible), its children aside. */
function tagVerdict(tag, html) {
  const attr = (name) => tag.attrs.get(name) ?? "";
  // Styling, an id (a style or link target), alignment and a title all change the rendering;
  // Thunderbird's own markers (class "moz-...", e.g. signatures, quotes) are plain on any tag.
  if (attr("style")) return NO;
  if (attr("class")) return lower(attr("class")).startsWith("moz-") ? PLAIN : NO;
  if (attr("id") || attr("align") || attr("title")) return NO;
  const name = tag.name;
  if (name === "font") {
    if (attr("size")) return NO;
    return lower(attr("face")) === "monospace" ? PLAIN : NO;
  }
  if (PLAIN_TAGS.has(name)) return PLAIN;
  if (YES_TAGS.has(name)) return YES;
  if (ALTERING_TAGS.has(name)) return ALTERING;
  if (name === "body") {
    if (tag.attrs.has("background") || tag.attrs.has("dir")) return NO;
    if (tag.attrs.has("text") && attr("text") !== "#000000") return ALTERING;
    if (tag.attrs.has("bgcolor") && lower(attr("bgcolor")) !== "#ffffff") return ALTERING;
    return PLAIN;
  }
  if (name === "blockquote") return lower(attr("type")) === "cite" ? PLAIN : YES;
  // A link whose text is its own address (as a URL recognizer writes it) reads the same.
  if (name === "a") return firstChildValue(html, tag.end) === attr("href") ? PLAIN : ALTERING;
  return NO;
}

/**
 * Thunderbird's verdict for an HTML body: "plain", "yes" (converts, e.g. lists), "altering"
 * (converts with changes, e.g. bold) or "no" (loses something, e.g. images, tables).
 * @param {string} html
 * @returns {"plain" | "yes" | "altering" | "no"}
 */
export function convertibility(html) {
  let worst = PLAIN;
  for (const tag of startTags(html)) {
    worst = Math.max(worst, tagVerdict(tag, html));
    if (worst === NO) break;
  }
  return VERDICTS[worst];
}
