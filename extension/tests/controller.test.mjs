import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";

// A stand-in for the parts of Thunderbird's `messenger` the controller uses. The host behind
// connectNative is played by `hostReply`, a function of the request.
const calls = [];
let hostReply = () => ({ ok: true, result: {} });
let queued = false; // whether the Outbox still holds the message when the add-on checks
const session = new Map();
const closedTabs = new Set();
const listeners = () => ({ addListener() {} });

function makePort() {
  const onMessage = [];
  return {
    onMessage: { addListener: (f) => onMessage.push(f) },
    onDisconnect: { addListener() {} },
    postMessage(req) {
      // The add-on's hello on a new port: answered by a host of the same protocol.
      const reply = req.action === "ping" ? { ok: true, result: { protocol: req.params.protocol } } : hostReply(req);
      calls.push([req.action === "ping" ? "hello" : "host", req.action, req.params]);
      queueMicrotask(() => onMessage.forEach((f) => f({ id: req.id, ...reply })));
    },
    disconnect() {},
  };
}

globalThis.messenger = {
  i18n: { getMessage: (key, subs) => (subs ? `${key}:${subs.join(",")}` : key) },
  runtime: { connectNative: () => makePort(), getURL: (p) => p, getManifest: () => ({ version: "0" }) },
  storage: {
    session: {
      get: async (key) => (session.has(key) ? { [key]: session.get(key) } : {}),
      set: async (obj) => Object.entries(obj).forEach(([k, v]) => session.set(k, v)),
      remove: async (key) => session.delete(key),
    },
  },
  composeAction: {
    setBadgeText: async (d) => calls.push(["badge", d.text]),
    setBadgeBackgroundColor: async () => {},
    setTitle: async (d) => calls.push(["title", d.title]),
    setPopup: async () => {},
    openPopup: async () => {},
  },
  compose: {
    listAttachments: async () => [{ id: 5, name: "a.txt" }],
    getAttachmentFile: async () => new File(["hello"], "a.txt", { type: "text/plain" }),
    getComposeDetails: async () => ({}),
    setComposeDetails: async (tabId, d) => calls.push(["setComposeDetails", tabId, d]),
  },
  identities: { get: async (id) => ({ id, accountId: "account1" }) },
  accounts: { list: async () => [{ id: "account9", type: "none" }], get: async () => null },
  folders: {
    query: async (q) => {
      if (q.specialUse?.[0] === "outbox") return [{ id: "outbox-id" }];
      if (q.specialUse?.[0] === "sent") return [{ id: "sent-id" }];
      return [];
    },
    create: async () => null,
  },
  messages: {
    query: async (q) => {
      calls.push(["query", q]);
      return { messages: queued ? [{ id: 1 }] : [] };
    },
    getFull: async (id) => ({ headers: { "message-id": [`<parent${id}@example.org>`] } }),
    import: async (file, folderId) => calls.push(["import", folderId, await file.text()]),
  },
  notifications: { create: async (id, n) => calls.push(["notify", n.message]) },
  windows: { remove: async (id) => calls.push(["closeWindow", id]) },
  tabs: {
    query: async () => [],
    // Like Thunderbird: a closed tab's id is refused.
    get: async (id) => {
      if (closedTabs.has(id)) throw new Error(`Invalid tab ID: ${id}`);
      return { id, type: "messageCompose" };
    },
    onCreated: listeners(),
    onRemoved: listeners(),
  },
};

const c = await import("../modules/controller.js");
const notices = await import("../modules/notices.js");
c.timing.queueCheckMs = 5; // the Outbox check runs right after each test's send

const TAB = { id: 3, windowId: 30 };
const DETAILS = {
  identityId: "id1",
  from: "Alice <alice@example.com>",
  to: ["Bob <bob@example.org>"],
  cc: [],
  bcc: ["dave@example.org"],
  subject: "s",
  isPlainText: true,
  plainTextBody: "hi",
};
const ENCRYPTED =
  "Message-ID: <m1@example.com>\r\nFrom: Alice <alice@example.com>\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nMIAG\r\n";
const CLEAR = "Message-ID: <m1@example.com>\r\nFrom: Alice <alice@example.com>\r\nX-Keypost-Encrypted: yes\r\n\r\nhi\r\n";

beforeEach(async () => {
  await new Promise((r) => setTimeout(r, 10)); // let a previous test's window closing run
  await c.onTabRemoved(3); // as Thunderbird reports once the compose window is gone
  calls.length = 0;
  session.clear();
  closedTabs.clear();
});

async function encryptOn() {
  session.set("tab:3", { encrypt: true, recipients: [], statuses: [], key: "", error: "", lookupError: "" });
}

test("Encrypt off: Thunderbird sends as usual", async () => {
  assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), {});
  assert.equal(calls.filter((x) => x[0] === "host").length, 0);
});

test("success: clear copy to Sent first, then the Outbox with identity keys, then close", async () => {
  await encryptOn();
  hostReply = (req) => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
  const [, action, params] = calls.find((x) => x[0] === "host");
  assert.equal(action, "encrypt");
  assert.deepEqual(params.bcc, ["dave@example.org"]);
  assert.equal(params.for_outbox, true);
  assert.equal(params.identity_key, "id1");
  assert.equal(params.account_key, "account1");
  assert.deepEqual(params.attachments, [{ name: "a.txt", content_type: "text/plain", data_base64: "aGVsbG8=" }]);
  const imports = calls.filter((x) => x[0] === "import");
  assert.deepEqual(imports.map((x) => x[1]), ["sent-id", "outbox-id"]);
  assert.match(imports[1][2], /^X-Identity-Key: id1\r\nX-Account-Key: account1\r\nMessage-ID: <m1@example.com>\r\n/);
  assert.doesNotMatch(imports[0][2], /X-Identity-Key/);
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(calls.find((x) => x[0] === "closeWindow"), ["closeWindow", 30]);
});

test("fail closed: no container -> cancel, nothing imported, the user is told who and why", async () => {
  await encryptOn();
  hostReply = () => ({
    ok: false,
    error: { code: 10, name: "no_valid_container", message: "m",
      details: { recipients: [{ address: "carol@external.test", reason: "no gateway serves external.test" }] } },
  });
  assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
  assert.equal(calls.filter((x) => x[0] === "import").length, 0);
  const note = calls.find((x) => x[0] === "notify");
  // The user reads a sentence (the stand-in i18n returns the key), not the code's name.
  assert.match(note[1], /^error_no_valid_container\n/);
  assert.match(note[1], /carol@external\.test: no gateway serves external\.test/);
  assert.match(session.get("tab:3").error, /carol@external\.test/);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.filter((x) => x[0] === "closeWindow").length, 0);
});

test("address book entries are refused before the host is asked", async () => {
  await encryptOn();
  const details = { ...DETAILS, to: [{ id: "x", type: "mailingList" }] };
  assert.deepEqual(await c.onBeforeSend(TAB, details), { cancel: true });
  assert.equal(calls.filter((x) => x[0] === "host").length, 0);
  assert.ok(calls.some((x) => x[0] === "notify" && /reasonAddressBookEntry/.test(x[1])));
});

test("the Outbox refusing the message keeps the window open", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED } });
  const original = messenger.messages.import;
  messenger.messages.import = async () => {
    throw new Error("duplicate Message-ID");
  };
  try {
    assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
  } finally {
    messenger.messages.import = original;
  }
  assert.match(session.get("tab:3").error, /duplicate Message-ID/);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.filter((x) => x[0] === "closeWindow").length, 0);
});

test("a reply carries In-Reply-To and References of the message it answers", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  await c.onBeforeSend(TAB, { ...DETAILS, type: "reply", relatedMessageId: 7 });
  const [, , params] = calls.find((x) => x[0] === "host");
  assert.deepEqual(params.headers, { "In-Reply-To": "<parent7@example.org>", References: "<parent7@example.org>" });
});

test("a failed lookup is retried later without the recipients changing", async () => {
  await encryptOn();
  const original = messenger.compose.getComposeDetails;
  messenger.compose.getComposeDetails = async () => ({ from: "alice@example.com", to: ["bob@example.org"] });
  try {
    hostReply = () => ({ ok: false, error: { code: 7, name: "directory_unreachable", message: "down" } });
    await c.checkRecipients(3, true);
    assert.equal(session.get("tab:3").lookupError, "down");
    assert.equal(session.get("tab:3").statuses[0].state, "error");
    const asked = () => calls.filter((x) => x[0] === "host" && x[1] === "lookup").length;
    assert.equal(asked(), 1);
    await c.checkRecipients(3); // too soon: no new lookup
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(asked(), 1);
    session.set("tab:3", { ...session.get("tab:3"), retryAt: 0 }); // time has passed
    hostReply = (req) => ({ ok: true, result: { recipients: [{ address: "bob@example.org", status: "ok",
      containers: [{ role: "proxy-encryption", gateway: "example.org", valid: true, used: true }] }] } });
    await c.checkRecipients(3);
    await new Promise((r) => setTimeout(r, 700)); // the debounced lookup runs
    assert.equal(asked(), 2);
    assert.equal(session.get("tab:3").lookupError, "");
    assert.equal(session.get("tab:3").statuses[0].state, "gateway");
  } finally {
    messenger.compose.getComposeDetails = original;
  }
});

test("a message still in the Outbox later brings a reminder; a sent one does not", async () => {
  for (const stillQueued of [true, false]) {
    await encryptOn();
    calls.length = 0;
    queued = stillQueued;
    hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
    await c.onBeforeSend(TAB, DETAILS);
    await new Promise((r) => setTimeout(r, 30));
    const query = calls.find((x) => x[0] === "query");
    assert.deepEqual(query[1], { folderId: "outbox-id", headerMessageId: "m1@example.com" });
    const reminders = calls.filter((x) => x[0] === "notify" && x[1] === "queuedMessage");
    assert.equal(reminders.length, stillQueued ? 1 : 0);
    await c.onTabRemoved(3);
  }
});

test("a refused send's message stays until the recipients change", async () => {
  await encryptOn();
  const original = messenger.compose.getComposeDetails;
  let to = ["bob@example.org", "carol@external.test"];
  messenger.compose.getComposeDetails = async () => ({ from: "alice@example.com", to });
  hostReply = (req) =>
    req.action === "lookup"
      ? { ok: true, result: { recipients: [] } }
      : { ok: false, error: { code: 10, name: "no_valid_container", message: "m",
          details: { recipients: [{ address: "carol@external.test", reason: "none" }] } } };
  try {
    await c.checkRecipients(3, true);
    await c.onBeforeSend(TAB, { ...DETAILS, to });
    assert.match(session.get("tab:3").error, /carol@external\.test/);
    await c.checkRecipients(3); // same recipients: the message stays
    assert.match(session.get("tab:3").error, /carol/);
    to = ["bob@example.org"];
    await c.checkRecipients(3);
    assert.equal(session.get("tab:3").error, "");
  } finally {
    messenger.compose.getComposeDetails = original;
  }
});

test("an administrator's preset configures an unconfigured host (storage.managed)", async () => {
  const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  const fingerprint = "AB:".repeat(31) + "AB";
  const typed = fingerprint.replace(/:/g, " ").toLowerCase(); // as an administrator may write it
  for (const [preset, expected] of [
    [{ directoryUrl: "ldaps://dir.example.com", trustAnchorPem: pem }, {}],
    // With the fingerprint preset too, the host checks the anchor against it.
    [{ directoryUrl: "ldaps://dir.example.com", trustAnchorPem: pem, trustAnchorFingerprint: typed },
      { trust_anchor_fingerprint: fingerprint }],
  ]) {
    calls.length = 0;
    // Like Thunderbird's StorageArea.get: only the keys asked for come back.
    messenger.storage.managed = {
      get: async (keys) => Object.fromEntries(keys.filter((k) => k in preset).map((k) => [k, preset[k]])),
    };
    hostReply = (req) => ({ ok: true, result: req.action === "status" ? { configured: false } : {} });
    try {
      await c.applyManagedDirectory();
    } finally {
      delete messenger.storage.managed;
    }
    const configure = calls.find((x) => x[0] === "host" && x[1] === "configure");
    assert.ok(configure, "the host was configured from the preset");
    assert.deepEqual(configure[2], { directory: preset.directoryUrl, trust_anchor_pem: pem, test: false, ...expected });
  }
});

test("the add-on's host client says hello with its protocol and version on every port", () => {
  assert.deepEqual(c.host.hello, { action: "ping", params: { protocol: 1, version: "0" } });
});

test("the Outbox refusing the message takes the clear Sent copy back out", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const original = messenger.messages.import;
  messenger.messages.import = async (file, folderId) => {
    calls.push(["import", folderId, await file.text()]);
    if (folderId === "outbox-id") throw new Error("the Outbox is full");
    return { id: 41, folder: { id: folderId } };
  };
  messenger.messages.delete = async (ids, skipTrash) => calls.push(["delete", ids, skipTrash]);
  try {
    assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
  } finally {
    messenger.messages.import = original;
    delete messenger.messages.delete;
  }
  assert.deepEqual(calls.filter((x) => x[0] === "import").map((x) => x[1]), ["sent-id", "outbox-id"]);
  // Nothing went out, so no readable "sent" copy may suggest otherwise (not even in Trash).
  assert.deepEqual(calls.find((x) => x[0] === "delete"), ["delete", [41], true]);
  assert.match(session.get("tab:3").error, /the Outbox is full/);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.filter((x) => x[0] === "closeWindow").length, 0);
});

test("newsgroups with Encrypt on: nothing is sent, the user is told encrypted posting is unsupported", async () => {
  for (const extra of [
    { newsgroups: ["comp.mail.misc", "de.comm.misc"] },
    { followupTo: ["comp.mail.misc"] },
    { newsgroups: ["comp.mail.misc"], to: [], bcc: [] }, // a news-only post
  ]) {
    calls.length = 0;
    await encryptOn();
    hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
    assert.deepEqual(await c.onBeforeSend(TAB, { ...DETAILS, ...extra }), { cancel: true });
    // Not encrypted for the mail recipients alone (the groups would be dropped silently).
    assert.equal(calls.filter((x) => x[0] === "host").length, 0);
    assert.equal(calls.filter((x) => x[0] === "import").length, 0);
    const note = calls.find((x) => x[0] === "notify");
    assert.match(note[1], /^errorNewsgroups\nreasonNewsgroups:comp\.mail\.misc/);
    assert.match(session.get("tab:3").error, /reasonNewsgroups:comp\.mail\.misc/);
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(calls.filter((x) => x[0] === "closeWindow").length, 0);
  }
});

test("newsgroups with Encrypt off: Thunderbird posts as usual", async () => {
  assert.deepEqual(await c.onBeforeSend(TAB, { ...DETAILS, newsgroups: ["comp.mail.misc"] }), {});
  assert.equal(calls.filter((x) => x[0] === "notify").length, 0);
});

test("newsgroups and remote images to attach: said in the popup state and the title before Send", async () => {
  await encryptOn();
  const original = messenger.compose.getComposeDetails;
  let details = { from: "alice@example.com", to: ["bob@example.org"], newsgroups: ["comp.mail.misc"] };
  messenger.compose.getComposeDetails = async () => details;
  hostReply = () => ({ ok: true, result: { recipients: [] } });
  try {
    await c.checkRecipients(3, true);
    assert.deepEqual(session.get("tab:3").notices, [{ key: "noticeNewsgroups", subs: ["comp.mail.misc"] }]);
    assert.equal(calls.filter((x) => x[0] === "title").at(-1)[1], "noticeNewsgroups:comp.mail.misc");
    // Same recipients, the body changes: the notice follows without a new lookup.
    const img = '<img src="https://images.example.net/a.png" moz-do-not-send="false">';
    details = { from: "alice@example.com", to: ["bob@example.org"], isPlainText: false, body: img };
    const lookups = () => calls.filter((x) => x[1] === "lookup").length;
    const before = lookups();
    await c.checkRecipients(3);
    assert.deepEqual(session.get("tab:3").notices, [{ key: "noticeRemoteImages", subs: ["https://images.example.net/a.png"] }]);
    assert.equal(calls.filter((x) => x[0] === "title").at(-1)[1], "noticeRemoteImages:https://images.example.net/a.png");
    assert.equal(lookups(), before);
    details = { from: "alice@example.com", to: ["bob@example.org"], isPlainText: false, body: "<p>hi</p>" };
    await c.checkRecipients(3);
    assert.deepEqual(session.get("tab:3").notices, []);
  } finally {
    messenger.compose.getComposeDetails = original;
  }
});

test("remote images marked to be attached with Encrypt on: refused before the host is asked", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const body = '<p>Logo</p><img moz-do-not-send="false" src="https://images.example.net/a.png">';
  assert.deepEqual(await c.onBeforeSend(TAB, { ...DETAILS, isPlainText: false, body }), { cancel: true });
  assert.equal(calls.filter((x) => x[0] === "host").length, 0);
  assert.equal(calls.filter((x) => x[0] === "import").length, 0);
  const note = calls.find((x) => x[0] === "notify");
  assert.match(note[1], /^errorRemoteImages\nreasonRemoteImages:https:\/\/images\.example\.net\/a\.png$/);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls.filter((x) => x[0] === "closeWindow").length, 0);
});

test("remote images the host reports (it reads the HTML as a browser does): nothing is queued", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR, remote_images: ["https://x.example/b.png"] } });
  assert.deepEqual(await c.onBeforeSend(TAB, { ...DETAILS, isPlainText: false, body: "<p>odd markup</p>" }), { cancel: true });
  assert.equal(calls.filter((x) => x[0] === "host" && x[1] === "encrypt").length, 1);
  assert.equal(calls.filter((x) => x[0] === "import").length, 0);
  assert.match(session.get("tab:3").error, /reasonRemoteImages:https:\/\/x\.example\/b\.png/);
});

// Thunderbird awaits the listener and resolves or rejects the send only on its answer: a
// rejected promise leaves the send stuck with the compose window locked and nobody told why.
test("storage.session failing (state unreadable, or a refusal unsaved): cancelled, never a rejection", async () => {
  for (const [method, told] of [["get", /storage\.session broken/], ["set", /down/]]) {
    calls.length = 0;
    await encryptOn();
    hostReply = () => ({ ok: false, error: { code: 7, name: "directory_unreachable", message: "down" } });
    const original = messenger.storage.session[method];
    messenger.storage.session[method] = async () => {
      throw new Error("storage.session broken");
    };
    try {
      // An unreadable state leaves Encrypt unknown: refused, as if on.
      assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
    } finally {
      messenger.storage.session[method] = original;
    }
    assert.equal(calls.filter((x) => x[0] === "import").length, 0);
    assert.ok(calls.some((x) => x[0] === "notify" && told.test(x[1])), "the user is told why");
  }
});

/**
 * An encrypted send whose storage.session writes go through `afterQueued` once the Outbox has
 * taken the message; resolves when onBeforeSend has answered (checked to be a cancel).
 */
async function sendWithWritesAfterQueueing(afterQueued) {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const originalImport = messenger.messages.import;
  const originalSet = messenger.storage.session.set;
  let queuedNow = false;
  messenger.messages.import = async (file, folderId) => {
    calls.push(["import", folderId, await file.text()]);
    if (folderId === "outbox-id") queuedNow = true;
    return { id: folderId === "sent-id" ? 41 : 42 };
  };
  messenger.messages.delete = async (ids, skipTrash) => calls.push(["delete", ids, skipTrash]);
  messenger.storage.session.set = async (obj) => (queuedNow ? afterQueued(obj, originalSet) : originalSet(obj));
  try {
    assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
    calls.push(["answered"]);
  } finally {
    messenger.messages.import = originalImport;
    messenger.storage.session.set = originalSet;
    delete messenger.messages.delete;
  }
}

test("an error after the message is queued: no 'not sent', the Sent copy stays, the window closes", async () => {
  await sendWithWritesAfterQueueing(async () => {
    throw new Error("storage.session quota");
  });
  assert.deepEqual(calls.filter((x) => x[0] === "import").map((x) => x[1]), ["sent-id", "outbox-id"]);
  // The message goes out: its readable copy stays and the user is not asked to send it again.
  assert.equal(calls.filter((x) => x[0] === "delete").length, 0);
  assert.equal(calls.filter((x) => x[0] === "notify").length, 0);
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(calls.find((x) => x[0] === "closeWindow"), ["closeWindow", 30]);
});

test("the sending identity unknown (gone, or none given): refused before the host is asked, said so", async () => {
  for (const [details, get] of [
    [DETAILS, async () => null], // identities.get of a deleted identity
    [{ ...DETAILS, identityId: undefined }, async () => { throw new Error("Type error for parameter identityId"); }],
  ]) {
    calls.length = 0;
    await encryptOn();
    const original = messenger.identities.get;
    messenger.identities.get = get;
    try {
      assert.deepEqual(await c.onBeforeSend(TAB, details), { cancel: true });
    } finally {
      messenger.identities.get = original;
    }
    assert.equal(calls.filter((x) => x[0] === "host" || x[0] === "import").length, 0);
    const note = calls.find((x) => x[0] === "notify");
    assert.match(note[1], /^errorNoIdentity\n/);
    assert.match(session.get("tab:3").error, /errorNoIdentity/);
  }
});

/** Bob "looking up" in storage.session with no lookup scheduled, as after an event page restart. */
async function pollWithBobPending(retryAt) {
  const original = messenger.compose.getComposeDetails;
  messenger.compose.getComposeDetails = async () => ({ from: "alice@example.com", to: ["bob@example.org"] });
  session.set("tab:3", {
    encrypt: true, recipients: ["bob@example.org"], key: "alice@example.com\nbob@example.org",
    statuses: [{ address: "bob@example.org", state: "pending", gateways: [], reason: "" }],
    error: "", lookupError: "", retryAt, notices: [],
  });
  hostReply = () => ({ ok: true, result: { recipients: [{ address: "bob@example.org", status: "ok",
    containers: [{ role: "proxy-encryption", gateway: "example.org", valid: true, used: true }] }] } });
  try {
    await c.checkRecipients(3); // the poll
    await new Promise((r) => setTimeout(r, 700));
  } finally {
    messenger.compose.getComposeDetails = original;
  }
  return calls.filter((x) => x[0] === "host" && x[1] === "lookup").length;
}

test("after the event page restarts, recipients left 'looking up' are looked up again", async () => {
  // The debounce timer (memory) is gone and the key says nothing changed.
  assert.equal(await pollWithBobPending(Date.now() - 1), 1);
  assert.equal(session.get("tab:3").statuses[0].state, "gateway");
});

test("a lookup still under way is not asked again before the retry time", async () => {
  assert.equal(await pollWithBobPending(Date.now() + 10000), 0);
});

test("the clear Sent copy of a refused send cannot be taken back out: the user is told it is there", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const original = messenger.messages.import;
  messenger.messages.import = async (file, folderId) => {
    if (folderId === "outbox-id") throw new Error("the Outbox is full");
    return { id: 41 };
  };
  messenger.messages.delete = async () => {
    throw new Error("folder locked");
  };
  try {
    assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
  } finally {
    messenger.messages.import = original;
    delete messenger.messages.delete;
  }
  const note = calls.find((x) => x[0] === "notify");
  assert.match(note[1], /the Outbox is full/);
  assert.match(note[1], /reasonSentCopyStays/);
  assert.match(session.get("tab:3").error, /reasonSentCopyStays/);
});

test("a compose window closed while its send is being refused leaves no tab state behind", async () => {
  await encryptOn();
  let removed;
  hostReply = () => {
    // The user closes the window while the host works; tabs.onRemoved runs before the refusal.
    closedTabs.add(3);
    removed = c.onTabRemoved(3);
    return { ok: false, error: { code: 7, name: "directory_unreachable", message: "down" } };
  };
  assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
  await removed;
  assert.ok(calls.some((x) => x[0] === "notify"), "the user is still told the send was refused");
  assert.deepEqual([...session.keys()], [], "nothing would ever remove it");
});

test("every Reply-To address goes to the host, not only the first", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const replyTo = ["Desk <desk@example.com>", "Alice <alice@example.com>"];
  await c.onBeforeSend(TAB, { ...DETAILS, replyTo });
  assert.deepEqual(calls.find((x) => x[0] === "host")[2].reply_to, replyTo);
  calls.length = 0;
  await new Promise((r) => setTimeout(r, 10));
  await c.onTabRemoved(3);
  await encryptOn();
  await c.onBeforeSend(TAB, DETAILS);
  assert.deepEqual(calls.find((x) => x[0] === "host")[2].reply_to, []);
});

test("the delivery format goes to the host; sent as plain text, remote images are no reason to refuse", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const body = '<p>Logo</p><img moz-do-not-send="false" src="https://images.example.net/a.png">';
  const html = { ...DETAILS, isPlainText: false, body, plainTextBody: "Logo" };
  assert.deepEqual(await c.onBeforeSend(TAB, { ...html, deliveryFormat: "plaintext" }), { cancel: true });
  const params = calls.find((x) => x[0] === "host")[2];
  assert.equal(params.delivery_format, "plaintext");
  assert.equal(calls.filter((x) => x[0] === "import").length, 2);
  assert.deepEqual(notices.composeNotices({ ...html, deliveryFormat: "plaintext" }), []);
  assert.equal(notices.composeNotices({ ...html, deliveryFormat: "html" }).length, 1);
});

test("the priority goes to the host, and Thunderbird's own X-Priority header does not", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const customHeaders = [{ name: "X-Priority", value: "Highest" }, { name: "X-Note", value: "n" }];
  await c.onBeforeSend(TAB, { ...DETAILS, priority: "highest", customHeaders });
  const params = calls.find((x) => x[0] === "host")[2];
  assert.equal(params.priority, "highest");
  assert.deepEqual(params.headers, { "X-Note": "n" });
});

test("a return receipt request goes to the host", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  await c.onBeforeSend(TAB, { ...DETAILS, returnReceipt: true });
  assert.equal(calls.find((x) => x[0] === "host")[2].return_receipt, true);
});

test("a delivery status notification request: sent all the same, and the user is told it was not requested", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  assert.deepEqual(await c.onBeforeSend(TAB, { ...DETAILS, deliveryStatusNotification: true }), { cancel: true });
  assert.equal(calls.filter((x) => x[0] === "import").length, 2);
  assert.deepEqual(calls.filter((x) => x[0] === "notify").map((x) => x[1]), ["noticeNoDsn"]);
  calls.length = 0;
  await new Promise((r) => setTimeout(r, 10));
  await c.onTabRemoved(3);
  await encryptOn();
  await c.onBeforeSend(TAB, DETAILS);
  assert.equal(calls.filter((x) => x[0] === "notify").length, 0);
});

test("a queued send closes its window only after the listener has answered, however slow the last write", async () => {
  // storage.session is IPC in Thunderbird: the write after queueing takes a few event-loop turns.
  await sendWithWritesAfterQueueing(async (obj, set) => {
    await new Promise((r) => setTimeout(r, 20));
    return set(obj);
  });
  await new Promise((r) => setTimeout(r, 10));
  const order = calls.map((x) => x[0]).filter((x) => x === "answered" || x === "closeWindow");
  // Closing the compose window while Thunderbird still waits for the listener's cancel
  // would close it mid-send (see sendEncrypted).
  assert.deepEqual(order, ["answered", "closeWindow"]);
});

// What Thunderbird's own send would have added or done, which keypost's message cannot: sent
// without it, the mail would silently lack a part or a protection the user asked for.
for (const [what, extra, title, reason] of [
  ["Attach My vCard", { attachVCard: true }, "errorVCard", /^noticeVCard$/],
  // Redirect resends the original message as it is (Resent-* fields, From its author): built
  // anew from the compose details it would go out as a new message From the original author.
  ["Redirect", { type: "redirect", from: "Carol <carol@example.net>" }, "errorRedirect", /^noticeRedirect$/],
  [
    "Thunderbird's own OpenPGP encryption",
    { selectedEncryptionTechnology: { name: "OpenPGP", encryptBody: true, encryptSubject: true, signMessage: false } },
    "errorOwnSecurity",
    /^noticeOwnSecurity:OpenPGP$/,
  ],
  [
    "Thunderbird's own S/MIME signature",
    { selectedEncryptionTechnology: { name: "S/MIME", encryptBody: false, signMessage: true } },
    "errorOwnSecurity",
    /^noticeOwnSecurity:S\/MIME$/,
  ],
]) {
  test(`${what} with Encrypt on: refused before the host is asked, said why`, async () => {
    await encryptOn();
    hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
    assert.deepEqual(await c.onBeforeSend(TAB, { ...DETAILS, ...extra }), { cancel: true });
    assert.equal(calls.filter((x) => x[0] === "host").length, 0);
    assert.equal(calls.filter((x) => x[0] === "import").length, 0);
    const [head, ...lines] = calls.find((x) => x[0] === "notify")[1].split("\n");
    assert.equal(head, title);
    assert.match(lines.join("\n"), reason);
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(calls.filter((x) => x[0] === "closeWindow").length, 0);
  });
}

test("Thunderbird's own security configured but off, no vCard: sent as usual", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const off = { name: "S/MIME", encryptBody: false, signMessage: false };
  const details = { ...DETAILS, attachVCard: false, selectedEncryptionTechnology: off };
  assert.deepEqual(await c.onBeforeSend(TAB, details), { cancel: true });
  assert.deepEqual(calls.filter((x) => x[0] === "import").map((x) => x[1]), ["sent-id", "outbox-id"]);
});

test("the readable Sent copy not filed: the message still goes, and the user is told where it is missing", async () => {
  await encryptOn();
  hostReply = () => ({ ok: true, result: { message: ENCRYPTED, sent_copy: CLEAR } });
  const original = messenger.messages.import;
  messenger.messages.import = async (file, folderId) => {
    if (folderId === "sent-id") throw new Error("the Sent folder is read-only");
    return original(file, folderId);
  };
  try {
    assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
  } finally {
    messenger.messages.import = original;
  }
  assert.deepEqual(calls.filter((x) => x[0] === "import").map((x) => x[1]), ["outbox-id"]);
  // Thunderbird's own Sent copy is the encrypted one, which the sender cannot read.
  assert.deepEqual(calls.filter((x) => x[0] === "notify").map((x) => x[1]), ["noticeNoSentCopy:the Sent folder is read-only"]);
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(calls.find((x) => x[0] === "closeWindow"), ["closeWindow", 30]);
});

test("a host answer whose message is not enveloped (a bug, another version): nothing is queued", async () => {
  for (const message of [
    "Message-ID: <m1@example.com>\r\nFrom: Alice <alice@example.com>\r\nContent-Type: text/plain\r\n\r\nhi in the clear\r\n",
    "Message-ID: <m1@example.com>\r\nFrom: Alice <alice@example.com>\r\n\r\nhi in the clear\r\n",
    "Message-ID: <m1@example.com>\r\nContent-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\nMIAG\r\n",
  ]) {
    calls.length = 0;
    await encryptOn();
    hostReply = () => ({ ok: true, result: { message, sent_copy: CLEAR } });
    assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
    assert.deepEqual(calls.filter((x) => x[0] === "import").map((x) => x[1]), [], message);
    assert.match(calls.find((x) => x[0] === "notify")[1], /^errorInternal\n/);
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(calls.filter((x) => x[0] === "closeWindow").length, 0);
  }
  // What the host writes (smime.encrypt_message) passes.
  calls.length = 0;
  await encryptOn();
  const real = "Message-ID: <m1@example.com>\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\r\nMIAG\r\n";
  hostReply = () => ({ ok: true, result: { message: real, sent_copy: CLEAR } });
  assert.deepEqual(await c.onBeforeSend(TAB, DETAILS), { cancel: true });
  assert.deepEqual(calls.filter((x) => x[0] === "import").map((x) => x[1]), ["sent-id", "outbox-id"]);
});
