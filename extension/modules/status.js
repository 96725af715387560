// Recipient status from host lookup/encrypt entries: what the popup shows and whether sending may go on.

/** States the popup knows; each has a _locales message "status_<state>". */
export const STATES = Object.freeze([
  "pending",
  "gateway",
  "genuine",
  "no_container",
  "invalid",
  "invalid_address",
  "error",
]);

/**
 * One recipient's display state from a PROTOCOL.md lookup entry.
 * @param {any} entry  {address, status, containers, reason}
 * @returns {{address: string, state: string, gateways: string[], reason: string}}
 */
export function classify(entry) {
  const address = String(entry?.address ?? "");
  const reason = entry?.reason ? String(entry.reason) : "";
  const status = entry?.status;
  const used = (Array.isArray(entry?.containers) ? entry.containers : []).filter(
    (c) => c && c.valid && c.used !== false,
  );
  if (status === "ok" && used.length > 0) {
    const gateways = [];
    for (const c of used) {
      if (c.role === "proxy-encryption") {
        const g = c.gateway || c.gateway_fingerprint?.slice(0, 12) || "?";
        if (!gateways.includes(g)) gateways.push(g);
      }
    }
    if (gateways.length > 0) return { address, state: "gateway", gateways, reason };
    return { address, state: "genuine", gateways: [], reason };
  }
  if (status === "ok") return { address, state: "invalid", gateways: [], reason: reason || "no usable container" };
  const known = ["no_container", "invalid", "invalid_address", "error"];
  return {
    address,
    state: known.includes(status) ? status : "error",
    gateways: [],
    reason: reason || String(status ?? "no answer"),
  };
}

/**
 * Status of every recipient in compose order: entries from the host where known, "pending"
 * for recipients the host has not answered for yet.
 * @param {string[]} recipients
 * @param {any[]} entries
 * @returns {{address: string, state: string, gateways: string[], reason: string}[]}
 */
export function statusList(recipients, entries) {
  const byKey = new Map();
  for (const e of entries ?? []) {
    // `given` is the string the add-on asked for: it matches where `address` (the host's
    // normalised form, e.g. an IDN domain as A-label) does not.
    for (const k of [e?.address, e?.given]) {
      if (typeof k === "string") byKey.set(k.toLowerCase(), e);
    }
  }
  return recipients.map((r) => {
    const e = byKey.get(r.toLowerCase());
    return e ? { ...classify(e), address: r } : { address: r, state: "pending", gateways: [], reason: "" };
  });
}

/**
 * Keep the known status of recipients still present while a new lookup runs, so only newly
 * entered recipients show "pending".
 * @param {string[]} recipients
 * @param {{address: string, state: string}[]} previous
 */
export function carryOver(recipients, previous) {
  const known = new Map((previous ?? []).map((s) => [s.address.toLowerCase(), s]));
  return recipients.map(
    (r) => known.get(r.toLowerCase()) ?? { address: r, state: "pending", gateways: [], reason: "" },
  );
}

/**
 * Summary for the badge and title: ready when every recipient has a usable container.
 * @param {{state: string}[]} list
 * @returns {{ready: boolean, failing: number, pending: number, total: number}}
 */
export function summarize(list) {
  let failing = 0;
  let pending = 0;
  for (const s of list) {
    if (s.state === "pending") pending++;
    else if (s.state !== "gateway" && s.state !== "genuine") failing++;
  }
  return { ready: list.length > 0 && failing === 0 && pending === 0, failing, pending, total: list.length };
}

/**
 * The one-line user message for a failed encrypt reply (PROTOCOL.md error object): names each
 * failing recipient and why, so the user can fix the recipient list.
 * @param {any} error  {code, name, message, details}
 * @returns {{title: string, lines: string[]}}
 */
export function describeError(error) {
  const lines = [];
  const failing = error?.details?.recipients;
  if (Array.isArray(failing) && failing.length > 0) {
    for (const r of failing) lines.push(`${r.address}: ${r.reason}`);
  } else {
    lines.push(String(error?.message ?? "unknown error"));
  }
  return { title: String(error?.name ?? "error"), lines };
}

const GREY = "#6b6b6b";
const GREEN = "#1a7f37";
const AMBER = "#b26a00";
const RED = "#c62828";

/**
 * What the compose button shows for a tab's state (tabstate.js): the badge's _locales key and
 * colour, the title as lines (a _locales key with substitutions, or text as it is), and
 * whether a click opens the popup (while off, a click turns Encrypt on). First match wins: a
 * refused send's reason, then what Send would be refused for (notices), then failing or
 * pending recipients.
 * @param {{encrypt: boolean, statuses: {state: string}[], error?: string, lookupError?: string,
 *   notices?: {key: string, subs: string[]}[]}} state
 * @returns {{badge: string, color: string, title: ({key: string, subs?: string[]} | {text: string})[],
 *   popup: boolean}}
 */
export function buttonLook(state) {
  if (!state.encrypt) return { badge: "badgeOff", color: GREY, title: [{ key: "titleOff" }], popup: false };
  const on = (color, title) => ({ badge: "badgeOn", color, title, popup: true });
  if (state.error) return on(RED, [{ key: "notSentTitle" }, { text: state.error }]); // who and why
  const line = (n) => ({ key: n.key, subs: n.subs });
  const notices = state.notices ?? [];
  const refusing = notices.filter((n) => n.refuses !== false);
  if (refusing.length > 0) return on(RED, refusing.map(line));
  // Notices that refuse nothing follow whatever the recipients say.
  const said = notices.filter((n) => n.refuses === false).map(line);
  const summary = summarize(state.statuses ?? []);
  if (state.lookupError || summary.failing > 0) {
    const title = [{ key: "titleFailing", subs: [String(summary.failing || 1)] }];
    if (state.lookupError) title.push({ text: state.lookupError });
    return on(RED, [...title, ...said]);
  }
  if (!summary.ready) return on(AMBER, [{ key: "titlePending" }, ...said]);
  return on(GREEN, [{ key: "titleReady", subs: [String(summary.total)] }, ...said]);
}
