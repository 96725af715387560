// The compose action popup: Encrypt switch and each recipient's container status.

import { localizePage } from "../modules/i18n-dom.js";
import { storageKey } from "../modules/tabstate.js";

const $ = (id) => document.getElementById(id);
const msg = (key, subs) => messenger.i18n.getMessage(key, subs);

function stateText(s) {
  if (s.state === "gateway") return msg("status_gateway", [s.gateways.join(", ")]);
  return msg(`status_${s.state}`);
}

function render(state) {
  $("encrypt").checked = state.encrypt;
  $("error").hidden = !state.error;
  $("error").textContent = state.error ? `${msg("notSentTitle")}\n${state.error}` : "";
  // What Send would be refused for, said before Send (newsgroups, remote images to attach),
  // and what it cannot honour without refusing (no delivery status notification).
  const notices = state.encrypt ? (state.notices ?? []) : [];
  $("notices").hidden = notices.length === 0;
  $("notices").replaceChildren(
    ...notices.map((n) => {
      const li = document.createElement("li");
      if (n.refuses === false) li.className = "said";
      li.textContent = msg(n.key, n.subs);
      return li;
    }),
  );
  const tbody = $("recipients").querySelector("tbody");
  tbody.replaceChildren();
  const rows = state.encrypt ? state.statuses : [];
  $("empty").hidden = !state.encrypt || rows.length > 0;
  for (const s of rows) {
    const tr = document.createElement("tr");
    const addr = document.createElement("td");
    addr.textContent = s.address;
    const st = document.createElement("td");
    st.className = `state-${s.state}`;
    st.textContent = stateText(s);
    if (s.reason && s.state !== "gateway" && s.state !== "genuine") {
      const reason = document.createElement("div");
      reason.className = "reason";
      reason.textContent = s.reason;
      st.append(reason);
    }
    tr.append(addr, st);
    tbody.append(tr);
  }
}

async function main() {
  localizePage(document);
  const [tab] = await messenger.tabs.query({ active: true, currentWindow: true });
  if (!tab) return;
  render(await messenger.runtime.sendMessage({ type: "tabState", tabId: tab.id }));
  $("encrypt").addEventListener("change", async (ev) => {
    render(await messenger.runtime.sendMessage({ type: "setEncrypt", tabId: tab.id, on: ev.target.checked }));
  });
  messenger.storage.onChanged.addListener((changes, area) => {
    if (area !== "session") return;
    const change = changes[storageKey(tab.id)];
    if (change?.newValue) render(change.newValue);
  });
}

main().catch((e) => {
  $("error").hidden = false;
  $("error").textContent = String(e?.message ?? e);
});
