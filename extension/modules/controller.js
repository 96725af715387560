// The add-on's behaviour: Encrypt toggle, background recipient lookups, encrypt-on-send.
// Everything that touches `messenger.*` lives here; decisions are made by the pure modules.

import { HostClient, HOST_NAME, PROTOCOL_VERSION } from "./host.js";
import { bufferToBase64, getHeader, isEnveloped, prepareForOutbox, replyHeaders, setHeaders } from "./message.js";
import { collectNewsgroups, collectRecipients, extractAddress, invalidReason, recipientsKey } from "./recipients.js";
import { buttonLook, carryOver, describeError, statusList } from "./status.js";
import { dropTabState, getTabState, updateTabState } from "./tabstate.js";
import { keyedDebounce } from "./debounce.js";
import { normalizeFingerprint } from "./fingerprint.js";
import { composeNotices, ownSendOnly, remoteImagesOf, sameNotices } from "./notices.js";
import { deliveryFormatOf } from "./compose_choices.js";

const POLL_MS = 1500;
const LOOKUP_QUIET_MS = 600;
const RETRY_MS = 10000;
/** How long after queueing a message still in the Outbox means nobody is sending it. */
export const timing = { queueCheckMs: 20000 };
const POPUP = "popup/popup.html";

const msg = (key, subs) => messenger.i18n.getMessage(key, subs) || key;
const session = () => messenger.storage.session;
/** Compose windows are tabs (type messageCompose): tabs.get refuses the id once it closed. */
const tabOpen = (tabId) => messenger.tabs.get(tabId).then(() => true, () => false);
/** Every write of a tab's state: one that lands after the tab closed is taken back. */
const saveTabState = (tabId, patch) => updateTabState(session(), tabId, patch, tabOpen);

// Every new port starts with PROTOCOL.md's ping: a host of another protocol version is told
// nothing else, and the user sees its "update both" message instead of misread replies.
export const host = new HostClient(() => messenger.runtime.connectNative(HOST_NAME), {
  hello: { action: "ping", params: { protocol: PROTOCOL_VERSION, version: messenger.runtime.getManifest().version } },
});

const lookups = keyedDebounce((tabId) => runLookup(tabId).catch(console.error), LOOKUP_QUIET_MS);
/** Tabs whose send is being encrypted right now: polling must not race with closing. */
const sending = new Set();

// ---- badge and title ---------------------------------------------------------------------

export async function renderButton(tabId, state) {
  const ca = messenger.composeAction;
  const look = buttonLook(state);
  await ca.setBadgeText({ tabId, text: msg(look.badge) });
  await ca.setBadgeBackgroundColor({ tabId, color: look.color });
  await ca.setTitle({ tabId, title: look.title.map((l) => l.text ?? msg(l.key, l.subs)).join("\n") });
  // While on, a click opens the status popup (which has the switch to turn it off).
  await ca.setPopup({ tabId, popup: look.popup ? POPUP : "" });
}

// ---- toggling ----------------------------------------------------------------------------

export async function setEncrypt(tabId, on) {
  const state = await saveTabState(tabId, { encrypt: on, error: "", key: "" });
  await renderButton(tabId, state);
  if (on) await checkRecipients(tabId, true);
  return state;
}

export async function onActionClicked(tab) {
  const state = await getTabState(session(), tab.id);
  await setEncrypt(tab.id, !state.encrypt);
}

// ---- background recipient discovery -------------------------------------------------------

/** Re-read the compose window's recipients; schedule a lookup when they changed. */
export async function checkRecipients(tabId, immediately = false) {
  if (sending.has(tabId)) return;
  const state = await getTabState(session(), tabId);
  if (!state.encrypt) return;
  let details;
  try {
    details = await messenger.compose.getComposeDetails(tabId);
  } catch {
    return; // the window closed meanwhile
  }
  const rcpts = collectRecipients(details);
  const from = extractAddress(details.from ?? "");
  const key = recipientsKey(from, rcpts.all);
  // What Send would be refused for (newsgroups, remote images to attach), said before Send.
  const notices = composeNotices(details);
  // Unchanged recipients need no new lookup, unless the last one failed (host or directory
  // down) or never answered (the event page was suspended with the lookup scheduled or under
  // way, and its timer and port went with it): then it is retried every RETRY_MS, so the
  // status heals without user action.
  const unanswered = (state.statuses ?? []).some((s) => s.state === "pending");
  const retry = (state.lookupError || unanswered) && Date.now() >= (state.retryAt ?? 0);
  if (key === state.key && !immediately && !retry) {
    if (!sameNotices(notices, state.notices)) await renderButton(tabId, await saveTabState(tabId, { notices }));
    return;
  }
  const statuses = carryOver(rcpts.all, state.statuses);
  for (const bad of rcpts.invalid) {
    statuses.push({ address: bad, state: "invalid_address", gateways: [], reason: msg(invalidReason(bad)) });
  }
  // retryAt also spaces out retries while a lookup is still under way.
  const next = await saveTabState(tabId, {
    recipients: rcpts.all,
    statuses,
    notices,
    key,
    retryAt: Date.now() + RETRY_MS,
    // A refused send's message stays until the recipients change (then the statuses speak).
    error: key === state.key ? state.error : "",
  });
  await renderButton(tabId, next);
  if (rcpts.all.length === 0) return;
  if (immediately) await runLookup(tabId);
  else lookups.schedule(tabId);
}


async function runLookup(tabId) {
  const state = await getTabState(session(), tabId);
  if (!state.encrypt || state.recipients.length === 0) return;
  const [from] = state.key.split("\n");
  const asked = state.key;
  let entries = [];
  let lookupError = "";
  try {
    const result = await host.request("lookup", { from, recipients: state.recipients });
    entries = result?.recipients ?? [];
  } catch (e) {
    lookupError = e.message;
  }
  const now = await getTabState(session(), tabId);
  if (now.key !== asked) return; // recipients changed meanwhile; a newer lookup is scheduled
  const statuses = lookupError
    ? state.recipients.map((address) => ({ address, state: "error", gateways: [], reason: lookupError }))
    : statusList(state.recipients, entries);
  const retryAt = lookupError ? Date.now() + RETRY_MS : 0;
  const next = await saveTabState(tabId, { statuses, lookupError, retryAt });
  await renderButton(tabId, next);
}

/** Poll the open compose tabs with Encrypt on (no API reports recipient edits as they happen). */
export async function pollComposeTabs() {
  const tabs = await messenger.tabs.query({ type: "messageCompose" });
  for (const tab of tabs) await checkRecipients(tab.id).catch(() => {});
}

export function startPolling() {
  return setInterval(() => pollComposeTabs().catch(console.error), POLL_MS);
}

// ---- sending -----------------------------------------------------------------------------

async function gatherAttachments(tabId) {
  const out = [];
  for (const att of await messenger.compose.listAttachments(tabId)) {
    const file = await messenger.compose.getAttachmentFile(att.id);
    out.push({
      name: att.name || file.name,
      content_type: file.type || "application/octet-stream",
      data_base64: bufferToBase64(await file.arrayBuffer()),
    });
  }
  return out;
}

async function findFolder(query) {
  const found = await messenger.folders.query(query);
  return found.length > 0 ? found[0] : null;
}

/**
 * The account's Sent folder. A fresh account has none until Thunderbird's first copy, so it
 * is created under the name Thunderbird's default Fcc location uses ("Sent" at the root).
 */
async function findSentFolder(accountId) {
  const found =
    (await findFolder({ accountId, specialUse: ["sent"] })) ||
    (await findFolder({ accountId, path: "/Sent" }));
  if (found) return found;
  const account = await messenger.accounts.get(accountId, false);
  if (!account?.rootFolder) return null;
  return messenger.folders.create(account.rootFolder.id, "Sent");
}

/** Local Folders' "Unsent Messages": the Outbox Thunderbird sends from. */
async function findOutbox() {
  const accounts = await messenger.accounts.list(false);
  const local = accounts.find((a) => a.type === "none");
  return (
    (local && (await findFolder({ accountId: local.id, specialUse: ["outbox"] }))) ||
    (await findFolder({ specialUse: ["outbox"] }))
  );
}

function toList(v) {
  if (v === undefined || v === null) return [];
  return (Array.isArray(v) ? v : [v]).filter((x) => typeof x === "string" && x.trim() !== "");
}

/**
 * In-Reply-To and References for a reply, so the encrypted mail stays in its thread
 * (Thunderbird would add them itself, but its own MIME is not what gets sent).
 */
async function threadingHeaders(details) {
  if (details.type !== "reply" || !details.relatedMessageId) return {};
  try {
    const related = await messenger.messages.getFull(details.relatedMessageId);
    return replyHeaders(related?.headers ?? {});
  } catch {
    return {}; // the original is gone: send without threading rather than not at all
  }
}

/** The encrypt parameters (PROTOCOL.md `encrypt`) from compose details. */
export async function encryptParams(tab, details, identity) {
  const plainOnly = details.isPlainText === true;
  return {
    from: details.from,
    to: toList(details.to),
    cc: toList(details.cc),
    bcc: toList(details.bcc),
    reply_to: toList(details.replyTo), // all of them: an older host keeps the first
    subject: details.subject ?? "",
    // plainTextBody as it is: the host writes Thunderbird's format=flowed text from it and
    // reads body_html null as "written as plain text" (PROTOCOL.md, "The plain text body").
    body_plain: plainOnly ? (details.plainTextBody ?? details.body ?? "") : (details.plainTextBody ?? null),
    body_html: plainOnly ? null : (details.body ?? null),
    delivery_format: deliveryFormatOf(details),
    priority: details.priority ?? null,
    return_receipt: details.returnReceipt === true,
    attachments: await gatherAttachments(tab.id),
    headers: {
      ...Object.fromEntries(
        // X-Priority is Thunderbird's own record of the priority ("Highest"): `priority` says it.
        (details.customHeaders ?? [])
          .filter((h) => /^x-/i.test(h.name) && !/^x-priority$/i.test(h.name))
          .map((h) => [h.name, h.value]),
      ),
      ...(await threadingHeaders(details)),
    },
    identity_key: identity.id,
    account_key: identity.accountId,
    for_outbox: true,
  };
}

/** The user's sentence for a PROTOCOL.md error name (_locales "error_<name>"), else the name. */
function errorTitle(name) {
  return messenger.i18n.getMessage(`error_${name}`) || name;
}

async function failSend(tab, title, lines) {
  const text = lines.join("\n");
  // Never throws: it runs inside onBeforeSend, which must always answer (see there).
  const state = await saveTabState(tab.id, { error: text }).catch((e) => {
    console.error("keypost: the tab state was not saved", e);
    return null;
  });
  if (state) await renderButton(tab.id, state).catch(() => {});
  await messenger.notifications
    .create(`keypost-${tab.id}`, {
      type: "basic",
      iconUrl: messenger.runtime.getURL("icons/keypost.svg"),
      title: msg("notSentTitle"),
      message: `${title}\n${text}`,
    })
    .catch(console.error);
  messenger.composeAction.openPopup({ windowId: tab.windowId }).catch(() => {});
}

/**
 * compose.onBeforeSend: with Encrypt on, encrypt through the host, queue the result in the
 * Outbox, file the clear copy in Sent and cancel Thunderbird's own send. Fails closed: any
 * error cancels the send and keeps the window open. Never rejects: Thunderbird settles its
 * send only on the listener's answer, so a rejection would leave the compose window locked
 * with nobody told why.
 */
export async function onBeforeSend(tab, details) {
  let state;
  try {
    state = await getTabState(session(), tab.id);
  } catch (e) {
    // Whether Encrypt is on is unknown: refuse rather than risk sending in the clear.
    await failSend(tab, msg("errorInternal"), [String(e?.message ?? e)]);
    return { cancel: true };
  }
  if (!state.encrypt) return {};
  sending.add(tab.id);
  try {
    return await sendEncrypted(tab, details);
  } finally {
    sending.delete(tab.id);
  }
}

/** onBeforeSend with Encrypt on; always answers `{cancel: true}`. */
async function sendEncrypted(tab, details) {
  let sentCopyId = null; // the clear copy filed in Sent, taken back out if nothing is queued
  let sentCopyMissing = ""; // why the clear copy is not in Sent, told once the mail is queued
  let outgoing;
  let outbox;
  try {
    // The host encrypts for mail recipients only; posting to newsgroups would either drop
    // them (the Outbox sends mail) or leak the clear text to a news server: refuse.
    const groups = collectNewsgroups(details);
    if (groups.length > 0) {
      await failSend(tab, msg("errorNewsgroups"), [msg("reasonNewsgroups", [groups.join(", ")])]);
      return { cancel: true };
    }
    // Images the user marked "attach" that are on the web: Thunderbird would embed them, keypost
    // cannot fetch them; sending them as links would leak the reading to their server.
    const remote = remoteImagesOf(details);
    if (remote.length > 0) {
      await failSend(tab, msg("errorRemoteImages"), [msg("reasonRemoteImages", [remote.join(", ")])]);
      return { cancel: true };
    }
    // A redirect, Thunderbird's own encryption or signature, the vCard it would attach:
    // keypost's message cannot be or carry them, and sent without, they would be dropped.
    const only = ownSendOnly(details);
    if (only.length > 0) {
      await failSend(tab, msg(only[0].error), only.map((n) => msg(n.key, n.subs.length > 0 ? n.subs : undefined)));
      return { cancel: true };
    }
    const rcpts = collectRecipients(details);
    if (rcpts.unresolved > 0 || rcpts.invalid.length > 0) {
      await failSend(tab, msg("errorRecipients"), [
        ...rcpts.invalid.map((a) => `${a}: ${msg(invalidReason(a))}`),
        ...(rcpts.unresolved > 0 ? [msg("reasonAddressBookEntry")] : []),
      ]);
      return { cancel: true };
    }
    // The identity's key and account pick the sender and SMTP server of the queued message.
    const identity = details.identityId ? await messenger.identities.get(details.identityId).catch(() => null) : null;
    if (!identity?.id) {
      await failSend(tab, msg("errorNoIdentity"), [msg("errorNoIdentity")]);
      return { cancel: true };
    }
    const params = await encryptParams(tab, details, identity);
    let result;
    try {
      result = await host.request("encrypt", params);
    } catch (e) {
      const { title, lines } = describeError({ name: e.codeName, message: e.message, details: e.details });
      await failSend(tab, errorTitle(title), lines);
      return { cancel: true };
    }
    // The host reads the HTML as a browser would; it may find what the check above missed.
    if (Array.isArray(result.remote_images) && result.remote_images.length > 0) {
      await failSend(tab, msg("errorRemoteImages"), [msg("reasonRemoteImages", [result.remote_images.join(", ")])]);
      return { cancel: true };
    }
    // Fail closed on the host's word too: only an envelope goes into the Outbox.
    if (!isEnveloped(result?.message)) throw new Error("the keypost host answered with a message that is not encrypted");
    const sender = extractAddress(details.from ?? "");
    outgoing = prepareForOutbox(result.message, {
      identityKey: identity.id,
      accountKey: identity.accountId,
      sender,
    });
    outbox = await findOutbox();
    if (!outbox) {
      await failSend(tab, msg("errorNoOutbox"), [msg("errorNoOutbox")]);
      return { cancel: true };
    }
    // The clear copy first: Thunderbird's own Sent copy of the encrypted message carries the
    // same Message-ID, and import refuses a Message-ID the folder already has.
    if (typeof result.sent_copy === "string") {
      try {
        const sent = await findSentFolder(identity.accountId);
        const copy = setHeaders(result.sent_copy, { "X-Identity-Key": null, "X-Account-Key": null });
        const file = new File([copy], "keypost-sent.eml", { type: "message/rfc822" });
        if (sent) sentCopyId = (await messenger.messages.import(file, sent.id, { read: true }))?.id ?? null;
        else sentCopyMissing = msg("reasonNoSentFolder");
      } catch (e) {
        // The message itself still goes out; only the readable copy is missing.
        console.error("keypost: filing the Sent copy failed", e);
        sentCopyMissing = String(e?.message ?? e);
      }
    }
    try {
      await messenger.messages.import(
        new File([outgoing], "keypost-outbox.eml", { type: "message/rfc822" }),
        outbox.id,
        { read: true },
      );
    } catch (e) {
      await failSend(tab, msg("errorQueue"), [String(e?.message ?? e), ...(await withdrawSentCopy(sentCopyId))]);
      return { cancel: true };
    }
  } catch (e) {
    await failSend(tab, msg("errorInternal"), [String(e?.message ?? e), ...(await withdrawSentCopy(sentCopyId))]);
    return { cancel: true };
  }
  // Queued: the message goes out, so nothing from here on may withdraw the Sent copy or say
  // "not sent" (the user would send it a second time).
  await saveTabState(tab.id, { error: "" }).catch(console.error);
  const messageId = getHeader(outgoing, "Message-ID") ?? "";
  // Said in the popup before Send too: the Outbox cannot ask the server for a DSN.
  if (details.deliveryStatusNotification === true) tellQueued(`keypost-nodsn-${tab.id}`, "noDsnTitle", msg("noticeNoDsn"));
  // Thunderbird's own Sent copy is the encrypted message, which the sender cannot read.
  if (sentCopyMissing) {
    tellQueued(`keypost-nosent-${tab.id}`, "noSentCopyTitle", msg("noticeNoSentCopy", [sentCopyMissing]));
  }
  setTimeout(() => remindIfQueued(outbox.id, messageId).catch(console.error), timing.queueCheckMs);
  // Close after this listener has returned its cancel, so Thunderbird is not mid-send: the
  // timer is set after the last await, or it could fire while that await waits.
  setTimeout(() => closeCompose(tab).catch(console.error), 0);
  return { cancel: true };
}

/** A notification about a message that is queued (never awaited: the send is done). */
function tellQueued(id, titleKey, message) {
  messenger.notifications
    .create(id, { type: "basic", iconUrl: messenger.runtime.getURL("icons/keypost.svg"), title: msg(titleKey), message })
    .catch(console.error);
}

/**
 * Remove a filed clear Sent copy of a message that was not queued after all (skipping Trash).
 * @returns {Promise<string[]>} what to tell the user: a line when the copy stays in Sent
 */
async function withdrawSentCopy(id) {
  if (id === null) return [];
  try {
    await messenger.messages.delete([id], true);
    return [];
  } catch (e) {
    console.error("keypost: the Sent copy stays", e);
    return [msg("reasonSentCopyStays")];
  }
}

/**
 * Without mailnews.sendInBackground the Outbox waits for "Send Unsent Messages" (no API tells
 * the add-on the pref): if the message is still queued after a while, say so.
 */
async function remindIfQueued(outboxId, messageId) {
  const headerMessageId = messageId.replace(/^<|>$/g, "");
  if (!headerMessageId) return;
  const page = await messenger.messages.query({ folderId: outboxId, headerMessageId });
  if ((page?.messages ?? []).length === 0) return;
  await messenger.notifications.create(`keypost-queued-${headerMessageId}`, {
    type: "basic",
    iconUrl: messenger.runtime.getURL("icons/keypost.svg"),
    title: msg("queuedTitle"),
    message: msg("queuedMessage"),
  });
}

async function closeCompose(tab) {
  sending.add(tab.id);
  await messenger.compose.setComposeDetails(tab.id, { isModified: false }).catch(() => {});
  await messenger.windows.remove(tab.windowId);
}

export async function onTabRemoved(tabId) {
  lookups.cancel(tabId);
  sending.delete(tabId);
  await dropTabState(session(), tabId);
}

export async function onComposeTabCreated(tab) {
  if (tab.type !== "messageCompose") return;
  await renderButton(tab.id, await getTabState(session(), tab.id));
}

// ---- host set-up ---------------------------------------------------------------------------

/** Admins preset the directory URL through storage.managed; configure an unconfigured host. */
export async function applyManagedDirectory() {
  let managed;
  try {
    // Every key: StorageArea.get returns only the keys it is asked for.
    managed = await messenger.storage.managed.get(["directoryUrl", "trustAnchorPem", "trustAnchorFingerprint"]);
  } catch {
    return; // no managed storage manifest: nothing preset
  }
  if (!managed?.directoryUrl) return;
  const status = await host.request("status", {});
  if (status.configured) return;
  // The host needs a trust anchor before it accepts a directory; the installer provides it.
  if (managed.trustAnchorPem) {
    const params = { directory: managed.directoryUrl, trust_anchor_pem: managed.trustAnchorPem, test: false };
    // The host refuses an anchor with another fingerprint (trust_anchor_mismatch); one that is
    // no fingerprint at all goes as it is, so it is refused rather than ignored.
    const preset = managed.trustAnchorFingerprint;
    if (preset) params.trust_anchor_fingerprint = normalizeFingerprint(preset) ?? preset;
    await host.request("configure", params);
  }
}
