import { test } from "node:test";
import assert from "node:assert/strict";
import { buttonLook, carryOver, classify, describeError, statusList, summarize } from "../modules/status.js";
import { readFileSync } from "node:fs";

const gw = (gateway, extra = {}) => ({ role: "proxy-encryption", gateway, valid: true, used: true, ...extra });

test("classify: gateways, genuine, failures", () => {
  assert.deepEqual(classify({ address: "b@x.org", status: "ok", containers: [gw("example.com"), gw("x.org"), gw("x.org")] }), {
    address: "b@x.org", state: "gateway", gateways: ["example.com", "x.org"], reason: "",
  });
  assert.equal(classify({ address: "g@y.org", status: "ok", containers: [{ role: "genuine", valid: true, used: true }] }).state, "genuine");
  assert.equal(classify({ address: "n@y.org", status: "no_container", containers: [], reason: "none" }).state, "no_container");
  assert.equal(classify({ address: "n@y.org", status: "ok", containers: [gw("a", { valid: false })] }).state, "invalid");
  assert.equal(classify({ address: "n@y.org", status: "weird" }).state, "error");
  assert.equal(classify({ address: "n@y.org", status: "ok", containers: [gw(null, { gateway_fingerprint: "9a0cdeadbeef0011" })] }).gateways[0], "9a0cdeadbeef");
});

test("statusList keeps compose order and marks unanswered recipients pending", () => {
  const list = statusList(["B@x.org", "c@y.org"], [{ address: "b@x.org", status: "ok", containers: [gw("x.org")] }]);
  assert.deepEqual(list.map((s) => s.state), ["gateway", "pending"]);
  assert.deepEqual(summarize(list), { ready: false, failing: 0, pending: 1, total: 2 });
});

test("summarize is ready only when every recipient is usable", () => {
  assert.equal(summarize([]).ready, false);
  assert.equal(summarize([{ state: "gateway" }, { state: "genuine" }]).ready, true);
  assert.deepEqual(summarize([{ state: "gateway" }, { state: "no_container" }, { state: "error" }]), {
    ready: false, failing: 2, pending: 0, total: 3,
  });
});

test("carryOver keeps known statuses for recipients still present", () => {
  const prev = [{ address: "b@x.org", state: "gateway", gateways: ["x.org"], reason: "" }];
  assert.deepEqual(carryOver(["c@y.org", "B@x.org"], prev).map((s) => s.state), ["pending", "gateway"]);
});

test("describeError names every failing recipient", () => {
  const e = describeError({ code: 10, name: "no_valid_container", message: "m",
    details: { recipients: [{ address: "c@y.org", reason: "no container" }, { address: "d@y.org", reason: "expired" }] } });
  assert.deepEqual(e, { title: "no_valid_container", lines: ["c@y.org: no container", "d@y.org: expired"] });
  assert.deepEqual(describeError({ name: "timeout", message: "slow" }).lines, ["slow"]);
});

test("statusList matches the host's entry by what was asked (given), e.g. an IDN domain", () => {
  // The host answers with the A-label form and echoes the asked string as `given`.
  const entry = { address: "kim@xn--bcher-kva.example", given: "kim@bücher.example", status: "ok", containers: [gw("bücher.example")] };
  const [kim] = statusList(["kim@bücher.example"], [entry]);
  assert.equal(kim.state, "gateway");
  assert.equal(kim.address, "kim@bücher.example", "shown as typed, so carryOver finds it again");
  assert.equal(carryOver(["kim@bücher.example"], [kim])[0].state, "gateway");
});

test("buttonLook: off, refused, notices before Send, failing, pending, ready", () => {
  const ok = { state: "gateway" };
  const NEWS = { key: "noticeNewsgroups", subs: ["comp.mail.misc"] };
  const DSN = { key: "noticeNoDsn", subs: [], refuses: false };
  const cases = [
    [{ encrypt: false, statuses: [ok], notices: [NEWS] }, "badgeOff", "#6b6b6b", [{ key: "titleOff" }], false],
    [{ encrypt: true, statuses: [ok], error: "c@y.org: none", notices: [NEWS] }, "badgeOn", "#c62828",
      [{ key: "notSentTitle" }, { text: "c@y.org: none" }], true],
    // A notice wins over a ready recipient list: Send would be refused.
    [{ encrypt: true, statuses: [ok], notices: [NEWS] }, "badgeOn", "#c62828", [NEWS], true],
    [{ encrypt: true, statuses: [ok, { state: "no_container" }] }, "badgeOn", "#c62828",
      [{ key: "titleFailing", subs: ["1"] }], true],
    [{ encrypt: true, statuses: [{ state: "error" }], lookupError: "down" }, "badgeOn", "#c62828",
      [{ key: "titleFailing", subs: ["1"] }, { text: "down" }], true],
    [{ encrypt: true, statuses: [ok, { state: "pending" }] }, "badgeOn", "#b26a00", [{ key: "titlePending" }], true],
    [{ encrypt: true, statuses: [] }, "badgeOn", "#b26a00", [{ key: "titlePending" }], true],
    [{ encrypt: true, statuses: [ok, ok], notices: [] }, "badgeOn", "#1a7f37", [{ key: "titleReady", subs: ["2"] }], true],
    // A notice that refuses nothing (no delivery status notification) is said after the status.
    [{ encrypt: true, statuses: [ok], notices: [DSN] }, "badgeOn", "#1a7f37",
      [{ key: "titleReady", subs: ["1"] }, { key: "noticeNoDsn", subs: [] }], true],
    [{ encrypt: true, statuses: [ok], notices: [DSN, NEWS] }, "badgeOn", "#c62828", [NEWS], true],
  ];
  const en = JSON.parse(readFileSync(new URL("../_locales/en/messages.json", import.meta.url), "utf8"));
  const de = JSON.parse(readFileSync(new URL("../_locales/de/messages.json", import.meta.url), "utf8"));
  for (const [state, badge, color, title, popup] of cases) {
    const look = buttonLook(state);
    assert.deepEqual(look, { badge, color, title, popup }, JSON.stringify(state));
    for (const key of [look.badge, ...look.title.filter((l) => l.key).map((l) => l.key)]) {
      assert.ok(key in en && key in de, key);
    }
  }
});
