// Options page: directory, account and trust anchor go straight to the host (`configure`);
// the add-on stores none of them, least of all the password.

import { localizePage } from "../modules/i18n-dom.js";

const $ = (id) => document.getElementById(id);
const msg = (key, subs) => messenger.i18n.getMessage(key, subs);

async function hostCall(action, params = {}) {
  const reply = await messenger.runtime.sendMessage({ type: "host", action, params });
  if (!reply?.ok) throw new Error(reply?.error?.message ?? "no answer from the keypost host");
  return reply.result;
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

async function load() {
  localizePage(document);
  let managed = {};
  try {
    managed = await messenger.storage.managed.get(["directoryUrl", "username"]);
  } catch {
    // no managed storage manifest installed: nothing preset by an administrator
  }
  if (managed.directoryUrl) {
    $("directory").value = managed.directoryUrl;
    $("managed").hidden = false;
  }
  if (managed.username) $("username").value = managed.username;
  try {
    showStatus(await hostCall("status"));
  } catch (e) {
    show(e.message, false);
  }
}

async function save(ev) {
  ev.preventDefault();
  const params = { directory: $("directory").value.trim(), username: $("username").value.trim() || null };
  const password = $("password").value;
  if (password) params.password = password;
  const file = $("anchor").files[0];
  if (file) params.trust_anchor_pem = await file.text();
  show(msg("optSaving"), true);
  try {
    const status = await hostCall("configure", params);
    $("password").value = "";
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
load();
