// Debouncing per key: lookups run once the recipient list has been quiet for a moment.

/**
 * @param {(key: any) => void} fn
 * @param {number} waitMs
 * @param {{setTimer?: typeof setTimeout, clearTimer?: typeof clearTimeout}} [timers]
 * @returns {{schedule: (key: any) => void, cancel: (key: any) => void}}
 */
export function keyedDebounce(fn, waitMs, timers = {}) {
  const setTimer = timers.setTimer ?? setTimeout;
  const clearTimer = timers.clearTimer ?? clearTimeout;
  const timersByKey = new Map();
  return {
    schedule(key) {
      if (timersByKey.has(key)) clearTimer(timersByKey.get(key));
      timersByKey.set(
        key,
        setTimer(() => {
          timersByKey.delete(key);
          fn(key);
        }, waitMs),
      );
    },
    cancel(key) {
      if (timersByKey.has(key)) clearTimer(timersByKey.get(key));
      timersByKey.delete(key);
    },
  };
}
