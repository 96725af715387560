// Options page: directory, account and trust anchor go straight to the host (`configure`);
// the add-on stores none of them, least of all the password. A new trust anchor is only sent
// once its fingerprint, computed here, is confirmed (by an administrator's preset or the user).

import { localizePage } from "../modules/i18n-dom.js";
import { AnchorError, anchorVerdict, certificateDer, derToPem, sha256Fingerprint } from "../modules/fingerprint.js";

const $ = (id) => document.getElementById(id);
const msg = (key, subs) => messenger.i18n.getMessage(key, subs);

/** The chosen certificate: null (none), {pem, fingerprint}, or {error} (not one certificate). */
let anchor = null;
/** Counts file choices: a slow read of an earlier choice must not replace a later one. */
let choices = 0;
/** The fingerprint an administrator preset (storage.managed trustAnchorFingerprint), or "". */
let presetFingerprint = "";

async function hostCall(action, params = {}) {
  const reply = await messenger.runtime.sendMessage({ type: "host", action, params });
  if (reply?.ok) return reply.result;
  // The PROTOCOL.md name picks the user's sentence (e.g. trust_anchor_mismatch); the host's
  // message says the detail.
  const title = reply?.error?.name ? msg(`error_${reply.error.name}`) : "";
  const message = reply?.error?.message ?? "no answer from the keypost host";
  throw new Error(title ? `${title}: ${message}` : message);
}

function show(text, ok) {
  $("result").textContent = text;
  $("result").className = ok ? "ok" : "error";
}

function showStatus(status) {
  if (status.directory) $("directory").value = status.directory;
  if (status.username) $("username").value = status.username;
  $("fingerprint").textContent = status.trust_anchor?.fingerprint ?? "-";
  if (status.config_error) show(status.config_error, false); // saving repairs it
}

/** Whether Save may send the chosen certificate, and what to tell the user. */
function anchorCheck() {
  if (!anchor) return { ok: true, text: "" };
  if (anchor.error) return { ok: false, text: anchor.error };
  const verdict = anchorVerdict(anchor.fingerprint, {
    preset: presetFingerprint,
    typed: $("expected").value,
    confirmed: $("confirmed").checked,
  });
  return { ok: verdict.ok, text: msg(verdict.key) };
}

function renderAnchorCheck() {
  const check = anchorCheck();
  $("anchorCheck").hidden = !anchor;
  $("newFingerprint").textContent = anchor?.fingerprint ?? "-";
  // With a preset the comparison is automatic: nothing to paste, nothing to tick past it.
  $("manualCheck").hidden = Boolean(presetFingerprint) || !anchor?.fingerprint;
  $("verdict").textContent = check.text;
  $("verdict").className = check.ok ? "ok" : "error";
  $("save").disabled = !check.ok;
}

async function onAnchorChosen() {
  const choice = ++choices;
  const file = $("anchor").files[0];
  anchor = null;
  $("expected").value = "";
  $("confirmed").checked = false;
  if (file) {
    let chosen;
    try {
      const der = certificateDer(new Uint8Array(await file.arrayBuffer()));
      chosen = { pem: derToPem(der), fingerprint: await sha256Fingerprint(der) };
    } catch (e) {
      chosen = { error: e instanceof AnchorError ? msg(e.key) : String(e?.message ?? e) };
    }
    if (choice !== choices) return;
    anchor = chosen;
  }
  renderAnchorCheck();
}

async function load() {
  localizePage(document);
  let managed = {};
  try {
    managed = await messenger.storage.managed.get(["directoryUrl", "username", "trustAnchorFingerprint"]);
  } catch {
    // no managed storage manifest installed: nothing preset by an administrator
  }
  if (managed.directoryUrl) {
    $("directory").value = managed.directoryUrl;
    $("managed").hidden = false;
  }
  if (managed.username) $("username").value = managed.username;
  presetFingerprint = typeof managed.trustAnchorFingerprint === "string" ? managed.trustAnchorFingerprint : "";
  renderAnchorCheck();
  try {
    showStatus(await hostCall("status"));
  } catch (e) {
    show(e.message, false);
  }
}

async function save(ev) {
  ev.preventDefault();
  const check = anchorCheck();
  if (!check.ok) {
    show(check.text, false);
    return;
  }
  const params = { directory: $("directory").value.trim(), username: $("username").value.trim() || null };
  const password = $("password").value;
  if (password) params.password = password;
  if (anchor) {
    // The host checks the fingerprint too (trust_anchor_mismatch): what it saves is what was confirmed.
    params.trust_anchor_pem = anchor.pem;
    params.trust_anchor_fingerprint = anchor.fingerprint;
  }
  show(msg("optSaving"), true);
  try {
    const status = await hostCall("configure", params);
    $("password").value = "";
    $("anchor").value = "";
    anchor = null;
    renderAnchorCheck();
    showStatus(status);
    show(msg("optSaved", [status.trust_anchor?.fingerprint ?? "-"]), true);
  } catch (e) {
    show(e.message, false);
  }
}

async function testConnection() {
  show(msg("optTesting"), true);
  try {
    const r = await hostCall("test_connection");
    show(msg("optTestOk", [r.directory, String(Math.round(r.elapsed_ms))]), true);
  } catch (e) {
    show(e.message, false);
  }
}

$("form").addEventListener("submit", save);
$("test").addEventListener("click", testConnection);
$("anchor").addEventListener("change", () => onAnchorChosen().catch((e) => show(String(e?.message ?? e), false)));
$("expected").addEventListener("input", renderAnchorCheck);
$("confirmed").addEventListener("change", renderAnchorCheck);
load();
