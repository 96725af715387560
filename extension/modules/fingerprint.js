// The trust anchor the user picks: its certificate bytes and SHA-256 fingerprint, and whether that is confirmed.

/** A file that is not one certificate; `key` names the _locales message that says why. */
export class AnchorError extends Error {
  /** @param {string} key */
  constructor(key) {
    super(key);
    this.key = key;
  }
}

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g;

/**
 * The DER of the one certificate in `bytes`: PEM (other text around it is ignored, as openssl
 * does) or DER, the two forms the host accepts. Throws AnchorError otherwise.
 * @param {Uint8Array} bytes  the file's content
 * @returns {Uint8Array}
 */
export function certificateDer(bytes) {
  const text = new TextDecoder("latin1").decode(bytes);
  const blocks = [...text.matchAll(PEM_BLOCK)];
  if (blocks.length > 1) throw new AnchorError("optAnchorSeveral");
  const der = blocks.length === 1 ? base64Bytes(blocks[0][1]) : bytes;
  if (!isOneDerSequence(der)) throw new AnchorError("optAnchorUnreadable");
  return der;
}

function base64Bytes(body) {
  let binary;
  try {
    binary = atob(body.replace(/\s+/g, ""));
  } catch {
    throw new AnchorError("optAnchorUnreadable");
  }
  return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
}

/**
 * Whether `der` is exactly one DER SEQUENCE (as every certificate is): a text file or a cut-off
 * download is refused here rather than fingerprinted and sent.
 */
function isOneDerSequence(der) {
  if (der.length < 2 || der[0] !== 0x30) return false;
  let length = der[1];
  let header = 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n === 0 || n > 4 || der.length < 2 + n) return false;
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + der[2 + i];
    header += n;
  }
  return header + length === der.length;
}

/**
 * PEM of a certificate's DER: the page sends the host exactly the bytes it fingerprinted.
 * @param {Uint8Array} der
 */
export function derToPem(der) {
  const b64 = btoa(Array.from(der, (b) => String.fromCharCode(b)).join(""));
  return `-----BEGIN CERTIFICATE-----\n${b64.match(/.{1,64}/g).join("\n")}\n-----END CERTIFICATE-----\n`;
}

/**
 * SHA-256 of the DER as colon-separated upper-case hex, the way the host, `openssl x509
 * -fingerprint -sha256` and `keypost directory ca export` print it.
 * @param {Uint8Array} der
 * @param {SubtleCrypto} [subtle]
 */
export async function sha256Fingerprint(der, subtle = globalThis.crypto.subtle) {
  const digest = new Uint8Array(await subtle.digest("SHA-256", der));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");
}

/**
 * A SHA-256 fingerprint however it was written (colons or spaces or none, any case, or
 * openssl's whole `sha256 Fingerprint=...` line) as `AB:CD:...`; null when it is none.
 * @param {string} text
 */
export function normalizeFingerprint(text) {
  const value = String(text ?? "");
  const digits = value.slice(value.lastIndexOf("=") + 1).replace(/[\s:]/g, "").toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(digits)) return null;
  return digits.match(/../g).join(":");
}

/**
 * Whether the certificate with fingerprint `actual` may be sent to the host, and the
 * _locales key that tells the user why. An administrator's preset (storage.managed) decides
 * on its own; else a fingerprint the user pasted must match; else the user must confirm
 * having compared it. A difference is never overridden by the confirmation.
 * @param {string} actual  sha256Fingerprint of the selected certificate
 * @param {{preset?: string, typed?: string, confirmed?: boolean}} how
 * @returns {{ok: boolean, key: string}}
 */
export function anchorVerdict(actual, { preset, typed, confirmed } = {}) {
  if (preset) {
    const expected = normalizeFingerprint(preset);
    if (!expected) return { ok: false, key: "optFingerprintPresetInvalid" };
    return expected === actual
      ? { ok: true, key: "optFingerprintPresetMatches" }
      : { ok: false, key: "optFingerprintPresetDiffers" };
  }
  if (typed && typed.trim()) {
    const expected = normalizeFingerprint(typed);
    if (!expected) return { ok: false, key: "optFingerprintTypedInvalid" };
    return expected === actual ? { ok: true, key: "optFingerprintMatches" } : { ok: false, key: "optFingerprintDiffers" };
  }
  return confirmed ? { ok: true, key: "optFingerprintConfirmed" } : { ok: false, key: "optFingerprintUnconfirmed" };
}
