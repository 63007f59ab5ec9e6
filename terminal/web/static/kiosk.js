// Kiosk and counter page behaviour. No inline script (CSP script-src 'self'); every string comes from
// the server-rendered page (message catalogue), none is written here.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var body = document.body;

  // --- live card events (server-sent events) ---------------------------------------------------
  if (body.dataset.sse === "on" && window.EventSource) {
    var here = function () { return location.pathname + location.search; };
    // A form being submitted is already taking the page to the next screen (post/redirect/get); the new
    // page's stream starts with where it should be, so events meanwhile must not start a second navigation.
    var leaving = false;
    document.addEventListener("submit", function () { leaving = true; }, true);
    window.addEventListener("pageshow", function () { leaving = false; });
    var go = function (target, always) {
      if (leaving) { return; }
      if (typeof target !== "string" || target.charAt(0) !== "/" || target.charAt(1) === "/") { return; }
      var url = new URL(target, location.href);
      if (url.pathname === location.pathname && (!always || url.pathname + url.search === here())) { return; }
      location.assign(url.pathname + url.search);
    };
    var source = new EventSource("/events");
    source.addEventListener("state", function (e) { go(JSON.parse(e.data).go, false); });
    ["inserted", "removed", "timeout", "error", "service"].forEach(function (name) {
      source.addEventListener(name, function (e) { go(JSON.parse(e.data).go, true); });
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // --- activity keeps the session alive (throttled) -------------------------------------------
  var lastPing = 0;
  var ping = function (e) {
    // Only the citizen's own input counts (not script-generated events).
    if (!e.isTrusted || body.dataset.sse !== "on" || body.dataset.screen === "idle") { return; }
    var now = Date.now();
    if (now - lastPing < 5000) { return; }
    lastPing = now;
    fetch("/touch", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" })
      .catch(function () {});
  };
  document.addEventListener("keydown", ping);
  document.addEventListener("pointerdown", ping);

  // --- PIN keypad ------------------------------------------------------------------------------
  var pin = document.getElementById("pin");
  if (pin) {
    document.querySelectorAll(".keypad .key").forEach(function (key) {
      key.addEventListener("click", function () {
        var k = key.dataset.key;
        if (k === "clear") { pin.value = ""; }
        else if (k === "back") { pin.value = pin.value.slice(0, -1); }
        else if (pin.value.length < 8) { pin.value += k; }
        pin.focus();
      });
    });
  }
  var pinForm = document.getElementById("pin-form");
  if (pinForm) {
    pinForm.addEventListener("submit", function () {
      // Show progress while the card signs and the chain is checked (the POST is synchronous).
      var progress = document.getElementById("progress");
      if (progress) { progress.hidden = false; }
      pinForm.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
      var back = document.getElementById("back-form");
      if (back) { back.hidden = true; }
      pinForm.classList.add("busy");
    });
  }
  var counterForm = document.getElementById("counter-form");
  if (counterForm) {
    counterForm.addEventListener("submit", function () {
      var progress = document.getElementById("progress");
      if (progress) { progress.hidden = false; }
      var submit = document.getElementById("submit");
      if (submit) { submit.disabled = true; }
    });
  }

  // Move focus to the main heading (or the error) so screen readers announce the new screen.
  var alertEl = document.querySelector('[role="alert"]');
  var focusTarget = alertEl || document.querySelector("main h1");
  if (focusTarget && !document.querySelector("[autofocus]")) {
    focusTarget.setAttribute("tabindex", "-1");
    focusTarget.focus({ preventScroll: true });
  }
})();
