import { test } from "node:test";
import assert from "node:assert/strict";
import { dropTabState, getTabState, updateTabState } from "../modules/tabstate.js";

// storage.session as a Map.
function fakeStorage() {
  const items = new Map();
  return {
    items,
    get: async (key) => (items.has(key) ? { [key]: items.get(key) } : {}),
    set: async (obj) => Object.entries(obj).forEach(([k, v]) => items.set(k, v)),
    remove: async (key) => items.delete(key),
  };
}

test("a write for an open tab is kept; one that lands after its tab closed is taken back", async () => {
  const storage = fakeStorage();
  const open = new Set([1, 2]);
  const isOpen = async (id) => open.has(id);
  await updateTabState(storage, 1, { encrypt: true }, isOpen);
  await updateTabState(storage, 2, { encrypt: true }, isOpen);
  open.delete(2);
  await dropTabState(storage, 2); // tabs.onRemoved
  const state = await updateTabState(storage, 2, { error: "not sent" }, isOpen); // the refusal, late
  assert.equal(state.error, "not sent");
  assert.deepEqual([...storage.items.keys()], ["tab:1"]);
  assert.equal((await getTabState(storage, 1)).encrypt, true);
});
