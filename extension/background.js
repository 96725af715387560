// keypost background: registers listeners only; the behaviour lives in modules/controller.js.

import * as c from "./modules/controller.js";
import { getTabState } from "./modules/tabstate.js";

messenger.composeAction.onClicked.addListener((tab) => c.onActionClicked(tab));
messenger.compose.onBeforeSend.addListener((tab, details) => c.onBeforeSend(tab, details));
messenger.compose.onComposeStateChanged.addListener((tab) => c.checkRecipients(tab.id));
messenger.compose.onIdentityChanged.addListener((tab) => c.checkRecipients(tab.id, true));
messenger.tabs.onCreated.addListener((tab) => c.onComposeTabCreated(tab));
messenger.tabs.onRemoved.addListener((tabId) => c.onTabRemoved(tabId));

// The popup and the options page reach the host through this one port-owning script.
messenger.runtime.onMessage.addListener((message) => {
  switch (message?.type) {
    case "tabState":
      return c.checkRecipients(message.tabId, true).then(() => getTabState(messenger.storage.session, message.tabId));
    case "setEncrypt":
      return c.setEncrypt(message.tabId, message.on);
    case "host":
      // Replies travel as {ok, result | error} because thrown errors lose their code in transit.
      return c.host.request(message.action, message.params ?? {}).then(
        (result) => ({ ok: true, result }),
        (e) => ({ ok: false, error: { code: e.code, name: e.codeName, message: e.message, details: e.details } }),
      );
    default:
      return undefined;
  }
});

c.startPolling();
c.applyManagedDirectory().catch((e) => console.warn("keypost: managed directory not applied:", e.message));
