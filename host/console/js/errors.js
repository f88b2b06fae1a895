// Loaded first: every uncaught error and console.error of the page is kept
// in window.__errors, which the browser tests read (and a person can too).
window.__errors = [];
window.addEventListener('error', (e) => window.__errors.push(String(e.message || e)));
window.addEventListener('unhandledrejection', (e) =>
  window.__errors.push('unhandled rejection: ' + ((e.reason && e.reason.message) || e.reason)));
(function () {
  const original = console.error;
  console.error = function (...args) {
    window.__errors.push(args.map(String).join(' '));
    original.apply(console, args);
  };
})();
