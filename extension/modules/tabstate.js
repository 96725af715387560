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
 *
 * `isOpen(tabId)` is asked after the write: a tab that closed while its state was being worked
 * on (a send refused or a lookup answered after the window went) has had its state dropped by
 * the close already, and nothing else would remove what the write put back. Asking after the
 * write leaves no gap: a tab still open then is dropped by its close, which comes later.
 * @param {any} storage
 * @param {number} tabId
 * @param {object} patch
 * @param {(tabId: number) => Promise<boolean>} [isOpen]
 */
export async function updateTabState(storage, tabId, patch, isOpen) {
  const state = { ...(await getTabState(storage, tabId)), ...patch };
  await storage.set({ [storageKey(tabId)]: state });
  if (isOpen && !(await isOpen(tabId))) await dropTabState(storage, tabId);
  return state;
}

/** @param {any} storage @param {number} tabId */
export async function dropTabState(storage, tabId) {
  await storage.remove(storageKey(tabId));
}
