// The page's language and the Intl formatting that goes with it, shared by both pages.
//
// The page speaks the language picked in the header's picker when there is one for this tab,
// else the first of the browser's languages (navigator.languages) that has a catalogue, else
// English. The pick is kept in this tab's sessionStorage only: nothing goes to localStorage
// (PRODUCT.md), so a new tab starts again from the browser's languages.
//
// The catalogues themselves are in en (room.js, index.js), de.js and fr.js beside this file;
// tests/tests/i18n.rs checks that every language has exactly English's keys and placeholders.
// To add a language: a catalogue file like de.js, its name below, and an import in each page.

/** The languages with a catalogue, each named in its own language for the picker. */
export const LANGUAGE_NAMES = { en: 'English', de: 'Deutsch', fr: 'Français' };

const PICKED = 'balint.lang';

/** The language to speak: the tab's pick, else the first of the browser's that `catalogues` has. */
export function chooseLanguage(catalogues) {
  let picked = null;
  try {
    picked = sessionStorage.getItem(PICKED);
  } catch {
    // Storage may be off; the browser's languages still decide.
  }
  return [picked, ...(navigator.languages || []), navigator.language, 'en']
    .map((tag) => String(tag || '').toLowerCase().split('-')[0])
    .find((code) => code in catalogues);
}

/**
 * Fills the header's `<select>` with the languages of `catalogues`, shows `lang`, and on a new
 * pick keeps it for this tab and calls `apply(code)` (which re-renders or reloads the page).
 */
export function mountPicker(select, catalogues, lang, apply) {
  select.replaceChildren(...Object.keys(catalogues).map((code) => {
    const option = document.createElement('option');
    option.value = code;
    option.lang = code;
    option.textContent = LANGUAGE_NAMES[code] || code;
    return option;
  }));
  select.value = lang;
  select.addEventListener('change', () => {
    try {
      sessionStorage.setItem(PICKED, select.value);
    } catch {
      // Without storage the pick holds until the page is reloaded.
    }
    apply(select.value);
  });
}

/** Numbers, clock times, dates, durations and "in 5 seconds", in `lang`. */
export function formatters(lang) {
  const number = new Intl.NumberFormat(lang);
  const twoDigits = new Intl.NumberFormat(lang, { minimumIntegerDigits: 2, useGrouping: false });
  const plain = new Intl.NumberFormat(lang, { useGrouping: false });
  const clock = new Intl.DateTimeFormat(lang, { hour: '2-digit', minute: '2-digit' });
  const date = new Intl.DateTimeFormat(lang, { dateStyle: 'medium' });
  const dateTime = new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'short' });
  const relative = new Intl.RelativeTimeFormat(lang, { numeric: 'always' });
  return {
    /** 1,234 / 1.234 / 1 234. */
    number: (n) => number.format(n),
    /** A clock time, e.g. 14:05 or 2:05 PM. */
    time: (ms) => clock.format(new Date(ms)),
    /** A date, e.g. 3 Mar 2025 / 03.03.2025 / 3 mars 2025. */
    date: (ms) => date.format(new Date(ms)),
    /** A date with its time. */
    dateTime: (ms) => dateTime.format(new Date(ms)),
    /** A stopwatch duration: m:ss, or h:mm:ss from an hour, with the language's digits. */
    duration: (ms) => {
      const total = Math.max(0, Math.floor(ms / 1000));
      const hours = Math.floor(total / 3600);
      const minutes = Math.floor((total % 3600) / 60);
      const seconds = twoDigits.format(total % 60);
      return hours ? `${plain.format(hours)}:${twoDigits.format(minutes)}:${seconds}` : `${plain.format(minutes)}:${seconds}`;
    },
    /** "in 5 seconds" / "in 5 Sekunden" / "dans 5 secondes". */
    inSeconds: (secs) => relative.format(secs, 'second'),
    /** A length of time in words, in whole hours, minutes or else seconds: "2 minutes" /
     * "2 Minuten" / "2 minutes", "90 seconds". */
    span: (secs) => {
      const [n, unit] = secs % 3600 === 0 && secs > 0 ? [secs / 3600, 'hour']
        : secs % 60 === 0 && secs > 0 ? [secs / 60, 'minute'] : [secs, 'second'];
      return new Intl.NumberFormat(lang, { style: 'unit', unit, unitDisplay: 'long' }).format(n);
    },
  };
}
