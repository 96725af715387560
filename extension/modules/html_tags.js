// Start tags of an HTML string where the HTML standard's tokenizer finds them (same subset
// as the host's keypost/host/html_tags.py): comments, bogus comments, end tags and the text
// of <script>, <style>, <textarea>, <title> and kin hold no tags; attributes may be split by
// whitespace or '/', quoted or not, in any case; a later duplicate attribute is dropped.

const TEXT_ONLY = new Set(["script", "style", "xmp", "iframe", "noembed", "noframes", "textarea", "title"]);
const LT = 60, GT = 62, SLASH = 47, BANG = 33, QUESTION = 63, EQUALS = 61, DQUOTE = 34, SQUOTE = 39;

const isSpace = (c) => c === 9 || c === 10 || c === 12 || c === 13 || c === 32;
const isAlpha = (c) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
const asciiLower = (s) => s.replace(/[A-Z]+/g, (m) => m.toLowerCase());

const REFERENCES = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0" };
// Names the tokenizer also resolves without ';' (unless a letter, digit or '=' follows).
const LEGACY = new Set(["amp", "lt", "gt", "quot", "nbsp"]);

/**
 * An attribute value with the character references Thunderbird's serializer writes resolved
 * (numeric ones and amp, lt, gt, quot, apos, nbsp), as the tokenizer resolves them inside an
 * attribute; other names stay as written.
 * @param {string} raw
 */
export function attributeValue(raw) {
  if (!raw.includes("&")) return raw;
  return raw.replace(/&(?:#(\d+);?|#[xX]([0-9a-fA-F]+);?|([A-Za-z0-9]+)(;?))/g, (whole, dec, hex, name, semi, at) => {
    if (name !== undefined) {
      if (semi) return REFERENCES[name] ?? whole;
      return LEGACY.has(name) && raw[at + whole.length] !== "=" ? REFERENCES[name] : whole;
    }
    const code = dec !== undefined ? Number(dec) : parseInt(hex, 16);
    return code > 0 && code <= 0x10ffff && !(code >= 0xd800 && code <= 0xdfff) ? String.fromCodePoint(code) : "\ufffd";
  });
}

/**
 * Read a start or end tag whose name starts at `i` (just after '<' or '</'); its attributes
 * only when `wanted` (a Set of tag names, or null for all) has its name.
 * @returns {{name: string, attrs: Map<string, string>, end: number} | null} null when the
 *   document ends inside the tag (the tokenizer then never emits it)
 */
function readTag(html, i, wanted) {
  const n = html.length;
  let j = i;
  while (j < n) {
    const c = html.charCodeAt(j);
    if (isSpace(c) || c === SLASH || c === GT) break;
    j++;
  }
  const tag = { name: asciiLower(html.slice(i, j)), attrs: new Map(), end: 0 };
  const keep = wanted === null || wanted.has(tag.name);
  const add = (from, to, value) => {
    if (!keep) return;
    const name = asciiLower(html.slice(from, to));
    if (!tag.attrs.has(name)) tag.attrs.set(name, attributeValue(value));
  };
  while (j < n) {
    let c = html.charCodeAt(j);
    if (isSpace(c) || c === SLASH) {
      j++;
      continue;
    }
    if (c === GT) {
      tag.end = j + 1;
      return tag;
    }
    // An attribute name: its first character may be '=' (the tokenizer's rule).
    const start = j++;
    while (j < n) {
      c = html.charCodeAt(j);
      if (isSpace(c) || c === SLASH || c === GT || c === EQUALS) break;
      j++;
    }
    const nameEnd = j;
    let k = j;
    while (k < n && isSpace(html.charCodeAt(k))) k++;
    if (k >= n) return null;
    if (html.charCodeAt(k) !== EQUALS) {
      add(start, nameEnd, "");
      j = k;
      continue;
    }
    j = k + 1;
    while (j < n && isSpace(html.charCodeAt(j))) j++;
    if (j >= n) return null;
    c = html.charCodeAt(j);
    if (c === DQUOTE || c === SQUOTE) {
      const close = html.indexOf(c === DQUOTE ? '"' : "'", j + 1);
      if (close < 0) return null;
      add(start, nameEnd, keep ? html.slice(j + 1, close) : "");
      j = close + 1;
    } else if (c === GT) {
      add(start, nameEnd, "");
    } else {
      const from = j;
      while (j < n && !isSpace(html.charCodeAt(j)) && html.charCodeAt(j) !== GT) j++;
      add(start, nameEnd, keep ? html.slice(from, j) : "");
    }
  }
  return null;
}

const EMPTY = new Set();

// The script data states (data, escaped, double escaped) and the marks that move each on.
const SCRIPT_MARKS = [/<!--|<\/script[\t\n\f\r />]/gi, /-->|<\/?script[\t\n\f\r />]/gi, /-->|<\/script[\t\n\f\r />]/gi];

/**
 * Where a script's text ends (its end tag's '<'), -1 when at the document's end: '<!--'
 * escapes, '<script' inside it double-escapes until '</script', '-->' leaves both.
 */
function scriptEnd(html, at) {
  let state = 0;
  for (;;) {
    const marks = SCRIPT_MARKS[state];
    marks.lastIndex = at;
    const found = marks.exec(html);
    if (!found) return -1;
    const mark = found[0];
    at = found.index + mark.length;
    if (mark === "<!--") {
      state = 1;
      const close = /-*>/y; // '<!-->' and '<!--->' close again
      close.lastIndex = at;
      if (close.exec(html)) {
        state = 0;
        at = close.lastIndex;
      }
    } else if (mark === "-->") state = 0;
    else if (mark[1] !== "/") state = 2;
    else if (state === 2) state = 1;
    else return found.index;
  }
}

/**
 * Every start tag the HTML tokenizer emits for `html`, in order.
 * @param {string} html
 * @param {Set<string> | null} [wanted]  tag names whose attributes are read (all when null)
 * @returns {Generator<{name: string, attrs: Map<string, string>, end: number}>}
 */
export function* startTags(html, wanted = null) {
  const n = html.length;
  let i = 0;
  while (i < n) {
    const lt = html.indexOf("<", i);
    if (lt < 0 || lt + 1 >= n) return;
    const c = html.charCodeAt(lt + 1);
    let skipFrom = -1; // a bogus comment: up to the next '>'
    if (c === BANG && html.startsWith("<!--", lt)) {
      if (html.startsWith(">", lt + 4)) i = lt + 5;
      else if (html.startsWith("->", lt + 4)) i = lt + 6;
      else {
        const end = /--!?>/g;
        end.lastIndex = lt + 4;
        const found = end.exec(html);
        if (!found) return;
        i = found.index + found[0].length;
      }
      continue;
    } else if (c === BANG || c === QUESTION) {
      skipFrom = lt + 2;
    } else if (c === SLASH) {
      if (lt + 2 >= n) return;
      const d = html.charCodeAt(lt + 2);
      if (d === GT) {
        i = lt + 3;
        continue;
      }
      if (!isAlpha(d)) skipFrom = lt + 2;
      else {
        const endTag = readTag(html, lt + 2, EMPTY);
        if (!endTag) return;
        i = endTag.end;
        continue;
      }
    } else if (!isAlpha(c)) {
      i = lt + 1; // a '<' that opens no markup is text
      continue;
    }
    if (skipFrom >= 0) {
      const gt = html.indexOf(">", skipFrom);
      if (gt < 0) return;
      i = gt + 1;
      continue;
    }
    const tag = readTag(html, lt + 1, wanted);
    if (!tag) return;
    yield tag;
    i = tag.end;
    if (tag.name === "plaintext") return;
    if (tag.name === "script") {
      const end = scriptEnd(html, i);
      if (end < 0) return;
      i = end;
    } else if (TEXT_ONLY.has(tag.name)) {
      const close = new RegExp(`</${tag.name}[\\t\\n\\f\\r />]`, "gi");
      close.lastIndex = i;
      const found = close.exec(html);
      if (!found) return;
      i = found.index;
    }
  }
}
