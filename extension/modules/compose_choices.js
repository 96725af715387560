// The compose window's choices Thunderbird's own send would honour, as `encrypt` parameters.

import { convertibility } from "./convertible.js";

/**
 * The `delivery_format` for compose details (ComposeDetails.deliveryFormat): null for a
 * message written as plain text (Thunderbird ignores the choice there), "auto" resolved the way
 * Thunderbird resolves it (plain text when its convertibility rule calls the body plain, else
 * both; never HTML only), and "both" when Thunderbird does not say (before 102), which is what
 * was sent before.
 * @param {{isPlainText?: boolean, deliveryFormat?: string | null, body?: string}} details
 * @returns {"plaintext" | "html" | "both" | null}
 */
export function deliveryFormatOf(details) {
  if (details?.isPlainText === true) return null;
  const chosen = details?.deliveryFormat;
  if (chosen === "plaintext" || chosen === "html" || chosen === "both") return chosen;
  if (chosen === "auto") return convertibility(details.body ?? "") === "plain" ? "plaintext" : "both";
  return "both";
}
