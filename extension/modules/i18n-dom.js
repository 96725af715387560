// Fill [data-i18n] elements of an add-on page from _locales (the HTML holds no user-visible text).

/** @param {Document} doc */
export function localizePage(doc) {
  for (const el of doc.querySelectorAll("[data-i18n]")) {
    el.textContent = messenger.i18n.getMessage(el.dataset.i18n);
  }
  for (const el of doc.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = messenger.i18n.getMessage(el.dataset.i18nPlaceholder);
  }
  doc.documentElement.lang = messenger.i18n.getUILanguage();
}
