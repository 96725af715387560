// Per compose tab state in storage.session: Encrypt on/off, recipients and their status.

const PREFIX = "tab:";

/**
 * @returns {{encrypt: boolean, recipients: string[], statuses: any[], key: string,
 *   error: string, lookupError: string, retryAt: number, notices: {key: string, subs: string[]}[]}}
 */
export function emptyState() {
  return { encrypt: false, recipients: [], statuses: [], key: "", error: "", lookupError: "", retryAt: 0, notices: [] };
}

/** @param {number} tabId */
export function storageKey(tabId) {
  return `${PREFIX}${tabId}`;
}

/**
 * @param {any} storage  browser.storage.session
 * @param {number} tabId
 */
export async function getTabState(storage, tabId) {
  const key = storageKey(tabId);
  const got = await storage.get(key);
  return { ...emptyState(), ...(got?.[key] ?? {}) };
}

/**
 * Merge `patch` into the tab's state and return the new state.
 * @param {any} storage
 * @param {number} tabId
 * @param {object} patch
 */
export async function updateTabState(storage, tabId, patch) {
  const state = { ...(await getTabState(storage, tabId)), ...patch };
  await storage.set({ [storageKey(tabId)]: state });
  return state;
}

/** @param {any} storage @param {number} tabId */
export async function dropTabState(storage, tabId) {
  await storage.remove(storageKey(tabId));
}
