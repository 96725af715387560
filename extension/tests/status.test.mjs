import { test } from "node:test";
import assert from "node:assert/strict";
import { carryOver, classify, describeError, statusList, summarize } from "../modules/status.js";

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
