import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  AnchorError,
  anchorVerdict,
  certificateDer,
  derToPem,
  normalizeFingerprint,
  sha256Fingerprint,
} from "../modules/fingerprint.js";

// A CA certificate as PEM and DER, and its fingerprint as openssl printed it (tests/data/trust_anchor).
const data = (name) => readFileSync(new URL(`../../tests/data/trust_anchor/${name}`, import.meta.url));
const PEM = data("ca.pem").toString("ascii");
const DER = new Uint8Array(data("ca.der"));
const OPENSSL = data("ca.sha256").toString("ascii").trim(); // "sha256 Fingerprint=50:F0:..."
const FINGERPRINT = OPENSSL.split("=")[1];
const bytes = (text) => new TextEncoder().encode(text);

test("the fingerprint of a PEM or DER certificate is the one openssl prints", async () => {
  assert.match(FINGERPRINT, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  for (const input of [bytes(PEM), DER]) {
    const der = certificateDer(input);
    assert.deepEqual(der, DER);
    assert.equal(await sha256Fingerprint(der), FINGERPRINT);
  }
});

test("PEM is found among other text, with CRLF line ends and stray spaces", () => {
  const noisy = `Certificate:\r\n    Subject: CN=keypost test directory CA\r\n${PEM.replace(/\n/g, "  \r\n")}\r\n`;
  assert.deepEqual(certificateDer(bytes(noisy)), DER);
});

test("a file that is not exactly one certificate is refused with the reason", () => {
  const refused = (input, key) => assert.throws(() => certificateDer(input), (e) => e instanceof AnchorError && e.key === key);
  refused(bytes(PEM + PEM), "optAnchorSeveral");
  refused(bytes("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"), "optAnchorUnreadable");
  refused(bytes("-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n"), "optAnchorUnreadable");
  refused(bytes("0 is not DER"), "optAnchorUnreadable");
  refused(DER.slice(0, DER.length - 1), "optAnchorUnreadable"); // cut short
  refused(new Uint8Array(), "optAnchorUnreadable");
});

test("what is sent to the host is the certificate that was fingerprinted", () => {
  const pem = derToPem(DER);
  assert.deepEqual(certificateDer(bytes(pem)), DER);
  assert.match(pem, /^-----BEGIN CERTIFICATE-----\n([A-Za-z0-9+/=]{1,64}\n)+-----END CERTIFICATE-----\n$/);
});

test("fingerprints are compared however they were written", () => {
  const plain = FINGERPRINT.replace(/:/g, "");
  for (const written of [FINGERPRINT, FINGERPRINT.toLowerCase(), plain, ` ${plain.match(/.{4}/g).join(" ")} `, OPENSSL]) {
    assert.equal(normalizeFingerprint(written), FINGERPRINT, written);
  }
  for (const bad of ["", plain.slice(1), `${plain}00`, plain.replace("5", "G")]) {
    assert.equal(normalizeFingerprint(bad), null, bad);
  }
});

test("the selected certificate is accepted only once its fingerprint is confirmed", () => {
  const other = FINGERPRINT.replace(/^50/, "51");
  const verdict = (how) => anchorVerdict(FINGERPRINT, how);
  // An administrator's preset decides on its own: no box to tick past it.
  assert.deepEqual(verdict({ preset: FINGERPRINT.toLowerCase(), confirmed: false }), { ok: true, key: "optFingerprintPresetMatches" });
  assert.deepEqual(verdict({ preset: other, confirmed: true, typed: FINGERPRINT }), { ok: false, key: "optFingerprintPresetDiffers" });
  assert.deepEqual(verdict({ preset: "not one", confirmed: true }), { ok: false, key: "optFingerprintPresetInvalid" });
  // Pasted from the administrator: compared; a difference cannot be ticked away.
  assert.deepEqual(verdict({ typed: FINGERPRINT.replace(/:/g, " ") }), { ok: true, key: "optFingerprintMatches" });
  assert.deepEqual(verdict({ typed: other, confirmed: true }), { ok: false, key: "optFingerprintDiffers" });
  assert.deepEqual(verdict({ typed: "12:34", confirmed: true }), { ok: false, key: "optFingerprintTypedInvalid" });
  // Compared by eye: the user says so.
  assert.deepEqual(verdict({ typed: " ", confirmed: true }), { ok: true, key: "optFingerprintConfirmed" });
  assert.deepEqual(verdict({}), { ok: false, key: "optFingerprintUnconfirmed" });
});
