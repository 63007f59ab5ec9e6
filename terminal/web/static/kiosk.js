// Kiosk and counter page behaviour. No inline script (CSP script-src 'self'); every string comes from
// the server-rendered page (message catalogue), none is written here.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var body = document.body;

  // --- display modes: low reach (every control in the lower part) and high contrast + large text ------
  // One tap from every screen; kept across this citizen's screens, forgotten when the session ends.
  var MODES_KEY = "cityid.modes";
  var applyModes = function (modes) {
    document.querySelectorAll(".mode-btn").forEach(function (btn) {
      var on = modes.indexOf(btn.dataset.mode) >= 0;
      btn.setAttribute("aria-pressed", on ? "true" : "false");
    });
    ["low-reach", "high-contrast"].forEach(function (m) {
      document.documentElement.classList.toggle(m, modes.indexOf(m) >= 0);
    });
  };
  var readModes = function () {
    try { return JSON.parse(sessionStorage.getItem(MODES_KEY) || "[]"); } catch (err) { return []; }
  };
  var forgetModes = function () {
    try { sessionStorage.removeItem(MODES_KEY); sessionStorage.removeItem("cityid.voice"); } catch (err) { /* none */ }
  };
  applyModes(readModes());
  document.querySelectorAll(".mode-btn").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var modes = readModes().filter(function (m) { return m !== btn.dataset.mode; });
      if (btn.getAttribute("aria-pressed") !== "true") { modes.push(btn.dataset.mode); }
      try { sessionStorage.setItem(MODES_KEY, JSON.stringify(modes)); } catch (err) { /* none */ }
      applyModes(modes);
    });
  });

  // --- voice guidance: pre-recorded per catalogue key (terminal/web/voice.py), played on every screen -------
  // On by default, one tap to turn off, volume beside it; forgotten with the display modes. The PIN keypad
  // says only how many digits are entered (voice.pin.count), never a digit.
  var VOICE_KEY = "cityid.voice";
  var voiceBase = body.dataset.voiceBase;
  var voicePrefs = function () {
    try { return JSON.parse(sessionStorage.getItem(VOICE_KEY) || "{}"); } catch (err) { return {}; }
  };
  var saveVoice = function (prefs) {
    try { sessionStorage.setItem(VOICE_KEY, JSON.stringify(prefs)); } catch (err) { /* none */ }
  };
  var queue = [];
  var playing = null;
  var voiceOn = function () { return voicePrefs().on !== false; };
  var volume = function () { var v = voicePrefs().volume; return typeof v === "number" ? v : 0.8; };
  var stop = function () {
    // Abort the download too: a paused element keeps its connection, and the browser has few per host.
    if (playing) { var old = playing; playing = null; old.pause(); old.removeAttribute("src"); old.load(); }
  };
  var playNext = function () {
    if (playing || queue.length === 0) { return; }
    var stem = queue.shift();
    var audio = new Audio(voiceBase + encodeURIComponent(stem) + ".wav");
    playing = audio;
    audio.volume = volume();
    var done = function () { if (playing === audio) { playing = null; playNext(); } };
    audio.addEventListener("ended", done);
    audio.addEventListener("error", done);
    audio.play().catch(done);
  };
  var say = function (stems, interrupt) {
    if (!voiceBase || !voiceOn()) { return; }
    if (interrupt) { queue = []; stop(); }
    stems.forEach(function (st) { if (st) { queue.push(st); } });
    playNext();
  };
  window.cityidSay = say;
  var voiceToggle = document.getElementById("voice-toggle");
  var voiceVolume = document.getElementById("voice-volume");
  if (voiceToggle) {
    var showVoice = function () {
      voiceToggle.setAttribute("aria-pressed", voiceOn() ? "true" : "false");
      voiceToggle.textContent = voiceOn() ? voiceToggle.dataset.on : voiceToggle.dataset.off;
      voiceVolume.value = String(Math.round(volume() * 100));
    };
    showVoice();
    voiceToggle.addEventListener("click", function () {
      var prefs = voicePrefs();
      prefs.on = !voiceOn();
      saveVoice(prefs);
      if (!prefs.on) { queue = []; stop(); }
      showVoice();
      if (prefs.on) { say(["voice.on"], true); }
    });
    voiceVolume.addEventListener("input", function () {
      var prefs = voicePrefs();
      prefs.volume = parseInt(voiceVolume.value, 10) / 100;
      saveVoice(prefs);
      if (playing) { playing.volume = prefs.volume; }
    });
  }
  if (body.dataset.voice) { say(body.dataset.voice.trim().split(/\s+/), true); }

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
      source.addEventListener(name, function (e) {
        if (name === "removed" || name === "timeout") { forgetModes(); }
        go(JSON.parse(e.data).go, true);
      });
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // --- activity keeps the session alive; a countdown with "more time" before any wipe (WCAG 2.2.1) ---
  // The server wipes after limit + warning seconds without a reported activity; the page reports activity
  // at most every 5 s (a trailing report follows a throttled one), so its own clock stays within 5 s of the
  // server's. The countdown starts from the last report, shows the seconds left and a "more time" button.
  var countdown = document.getElementById("countdown");
  var PING_GAP = 5000;
  var lastPing = Date.now();
  var trailing = null;
  var limitMs = countdown ? parseFloat(countdown.dataset.limit) * 1000 : 0;
  var warningMs = countdown ? parseFloat(countdown.dataset.warning) * 1000 : 0;
  var warnAt = countdown ? Date.now() + parseFloat(countdown.dataset.countdownIn) * 1000 : 0;
  var sendPing = function () {
    trailing = null;
    lastPing = Date.now();
    warnAt = lastPing + limitMs;
    if (countdown && !countdown.hidden) {
      countdown.hidden = true;
      document.dispatchEvent(new CustomEvent("kiosk:countdown", { detail: { shown: false } }));
    }
    fetch("/touch", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" })
      .catch(function () {});
  };
  var activity = function (e) {
    // Only the citizen's own input counts (not script-generated events).
    if (!e.isTrusted || body.dataset.sse !== "on" || !countdown) { return; }
    var wait = PING_GAP - (Date.now() - lastPing);
    if (wait <= 0 || (countdown && !countdown.hidden)) { sendPing(); }
    else if (trailing === null) { trailing = setTimeout(sendPing, wait); }
  };
  ["keydown", "pointerdown", "touchstart", "wheel", "scroll"].forEach(function (name) {
    document.addEventListener(name, activity, { capture: true, passive: true });
  });
  if (countdown) {
    var message = document.getElementById("countdown-message");
    var template = message.dataset.template;
    var more = document.getElementById("more-time");
    more.addEventListener("click", function () { sendPing(); });
    setInterval(function () {
      var now = Date.now();
      if (now < warnAt) { return; }
      var left = Math.max(0, Math.ceil((warnAt + warningMs - now) / 1000));
      message.textContent = template.replace("{n}", String(left));
      countdown.dataset.left = String(left);
      if (countdown.hidden) {
        countdown.hidden = false;
        more.focus({ preventScroll: true });
        if (window.cityidSay) { window.cityidSay(["countdown.text@" + left, "countdown.more"], true); }
        document.dispatchEvent(new CustomEvent("kiosk:countdown", { detail: { shown: true } }));
      }
    }, 250);
  }

  // --- a notice on the idle screen is for the citizen who just left, not for the next one ------------
  if (body.dataset.screen === "idle" && document.getElementById("notice")) {
    setTimeout(function () { location.replace("/"); }, 30000);
  }

  // --- PIN keypad ------------------------------------------------------------------------------
  var doneBtn = document.getElementById("done");
  if (doneBtn) { doneBtn.addEventListener("click", forgetModes); }

  var pin = document.getElementById("pin");
  if (pin) {
    // Validation messages in the page's language (the browser's own are in its UI language).
    pin.addEventListener("invalid", function () {
      pin.setCustomValidity(pin.value === "" ? pin.dataset.msgMissing : pin.dataset.msgFormat);
    });
    pin.addEventListener("input", function () {
      pin.setCustomValidity("");
      say(["voice.pin.count@" + pin.value.length], true);  // typed on a keyboard: the count, never the digit
    });
    document.querySelectorAll(".keypad .key").forEach(function (key) {
      key.addEventListener("click", function () {
        var k = key.dataset.key;
        if (k === "clear") { pin.value = ""; }
        else if (k === "back") { pin.value = pin.value.slice(0, -1); }
        else if (pin.value.length < 8) { pin.value += k; }
        say([k === "clear" ? "voice.pin.cleared" : "voice.pin.count@" + pin.value.length], true);
        pin.setCustomValidity("");
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
  // The counter's forms: terminal/web/static/counter.js.

  // Move focus to the main heading (or the error) so screen readers announce the new screen.
  var alertEl = document.querySelector('[role="alert"]');
  var focusTarget = alertEl || document.querySelector("main h1");
  if (focusTarget && !document.querySelector("[autofocus]")) {
    focusTarget.setAttribute("tabindex", "-1");
    focusTarget.focus({ preventScroll: true });
  }
})();
