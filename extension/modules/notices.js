// What the compose window holds that keypost cannot send encrypted: shown in the popup and
// the button's title while composing, and the reasons a send is refused.

import { startTags } from "./html_tags.js";
import { collectNewsgroups } from "./recipients.js";
import { deliveryFormatOf } from "./compose_choices.js";

const REMOTE = /^https?:\/\//i;
// What a URL parser drops around a URL (element.src does): C0 controls and spaces.
const FETCHED_BY_THUNDERBIRD = new Set(["img", "body"]);
let lastScan = { html: "", urls: [] };
const trimUrl = (s) => s.replace(/^[\u0000-\u0020]+|[\u0000-\u0020]+$/g, "").replace(/[\t\n\r]/g, "");

/**
 * The http(s) images Thunderbird's own send would fetch and attach: `<img src>` and
 * `<body background>` marked moz-do-not-send="false" ("Attach this image to the message").
 * keypost cannot fetch them (no host permission for the web), so they would stay links the
 * recipient's reader loads from the Internet. Each URL once, in order.
 * @param {string} html
 * @returns {string[]}
 */
export function remoteImagesToAttach(html) {
  if (typeof html !== "string" || !/moz-do-not-send/i.test(html)) return [];
  // The popup's poll asks every 1.5 s, mostly for the same body: read each body once.
  if (html === lastScan.html) return [...lastScan.urls];
  const urls = [];
  for (const tag of startTags(html, FETCHED_BY_THUNDERBIRD)) {
    if (tag.attrs.get("moz-do-not-send") !== "false") continue;
    const attr = tag.name === "img" ? "src" : tag.name === "body" ? "background" : null;
    const url = attr && tag.attrs.has(attr) ? trimUrl(tag.attrs.get(attr)) : "";
    if (REMOTE.test(url) && !urls.includes(url)) urls.push(url);
  }
  lastScan = { html, urls };
  return [...urls];
}

/**
 * The remote images of compose details (none when no HTML is sent: a message written as plain
 * text, or one whose delivery format sends plain text only).
 * @param {{isPlainText?: boolean, deliveryFormat?: string | null, body?: string}} details
 */
export function remoteImagesOf(details) {
  if (deliveryFormatOf(details) === "plaintext" || details?.isPlainText === true) return [];
  return remoteImagesToAttach(details?.body ?? "");
}

/**
 * The name of Thunderbird's own end-to-end technology ("OpenPGP", "S/MIME") when the compose
 * window asks it to encrypt or sign, else "". keypost's message replaces Thunderbird's own:
 * sent anyway it would carry no signature, and be encrypted to the gateways rather than
 * end to end as the user asked.
 * @param {{selectedEncryptionTechnology?: {name?: string, encryptBody?: boolean, signMessage?: boolean}}} details
 */
function ownSecurityOf(details) {
  const own = details?.selectedEncryptionTechnology;
  if (!own || (own.encryptBody !== true && own.signMessage !== true)) return "";
  return String(own.name || "OpenPGP / S/MIME");
}

/**
 * What only Thunderbird's own send can do, each a notice with the title of the refusal at Send
 * (`error`): Redirect (it resends the original message as it is, From its author, with
 * Resent-* fields; built anew from the compose details it would be another message), its own
 * OpenPGP or S/MIME, and "Attach My vCard" (no MailExtension API reads the identity's vCard).
 * Sent by keypost without them, the mail would silently lack what the user asked for.
 * @param {object} details  compose.getComposeDetails
 * @returns {{key: string, subs: string[], error: string}[]}
 */
export function ownSendOnly(details) {
  const found = [];
  if (details?.type === "redirect") found.push({ key: "noticeRedirect", subs: [], error: "errorRedirect" });
  const own = ownSecurityOf(details);
  if (own) found.push({ key: "noticeOwnSecurity", subs: [own], error: "errorOwnSecurity" });
  if (details?.attachVCard === true) found.push({ key: "noticeVCard", subs: [], error: "errorVCard" });
  return found;
}

/**
 * Notices for compose details with Encrypt on: each a _locales key and its substitutions.
 * A notice means Send will be refused until the user acts, unless it says `refuses: false`
 * (a choice that cannot be honoured but need not stop the mail).
 * @param {object} details  compose.getComposeDetails
 * @returns {{key: string, subs: string[], refuses?: false}[]}
 */
export function composeNotices(details) {
  const notices = [];
  const groups = collectNewsgroups(details ?? {});
  if (groups.length > 0) notices.push({ key: "noticeNewsgroups", subs: [groups.join(", ")] });
  const images = remoteImagesOf(details);
  if (images.length > 0) notices.push({ key: "noticeRemoteImages", subs: [images.join(", ")] });
  for (const { key, subs } of ownSendOnly(details)) notices.push({ key, subs });
  // Thunderbird's Outbox sends with fresh compose fields (nsMsgSendLater): no DSN is asked for
  // any queued message, so neither for the encrypted one. Said, not refused.
  if (details?.deliveryStatusNotification === true) notices.push({ key: "noticeNoDsn", subs: [], refuses: false });
  return notices;
}

/** Whether two notice lists say the same (to skip needless storage writes). */
export function sameNotices(a, b) {
  return JSON.stringify(a ?? []) === JSON.stringify(b ?? []);
}
