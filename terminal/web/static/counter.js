// Counter forms (clerk): sent in the background so that what the clerk and the citizen typed survives an
// error. The server never writes a secret (PIN, PUK, passwords) back into the page; this script puts the
// typed values back into the re-rendered form, except the fields the server marks data-clear (the wrong
// or invalid ones: only those are typed again). A city server that does not answer comes back as an error
// with a Retry button that sends the same form again. Without this script the form posts normally.
// No inline script (CSP script-src 'self'); every text comes from the server-rendered page.
(function () {
  "use strict";
  var busy = false;

  var focusMessage = function () {
    var target = document.querySelector('[role="alert"]') || document.querySelector("main h1");
    if (target) {
      target.setAttribute("tabindex", "-1");
      target.focus({ preventScroll: true });
    }
  };

  var swapPage = function (html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    document.title = doc.title;
    document.body.replaceWith(document.adoptNode(doc.body));
    return doc;
  };

  var showNetworkError = function (form) {
    var text = form.dataset.msgNetwork || "";
    var box = document.getElementById("form-alert");
    if (!box) {
      box = document.createElement("div");
      box.id = "form-alert";
      box.className = "error";
      box.setAttribute("role", "alert");
      form.parentNode.insertBefore(box, form);
    }
    box.textContent = "";
    var p = document.createElement("p");
    p.id = "form-message";
    p.textContent = text;
    box.appendChild(p);
    focusMessage();
  };

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!(form instanceof HTMLFormElement) || form.id !== "counter-form" || !window.fetch) { return; }
    e.preventDefault();
    if (busy) { return; }
    busy = true;
    var typed = {};
    form.querySelectorAll("input[data-secret]").forEach(function (input) { typed[input.name] = input.value; });
    var data = new FormData(form);
    var progress = document.getElementById("progress");
    if (progress) { progress.hidden = false; }
    form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    var retry = document.getElementById("retry");
    if (retry) { retry.disabled = true; }
    fetch(form.action, { method: "POST", body: data, credentials: "same-origin" })
      .then(function (resp) {
        if (resp.redirected) { location.assign(resp.url); return null; }  // e.g. signed out meanwhile
        return resp.text().then(function (html) {
          swapPage(html);
          var again = document.getElementById("counter-form");
          if (again) {
            again.querySelectorAll("input[data-secret]").forEach(function (input) {
              if (!input.hasAttribute("data-clear") && typed[input.name]) { input.value = typed[input.name]; }
            });
          }
          focusMessage();
          document.dispatchEvent(new CustomEvent("counter:answered", { detail: { status: resp.status } }));
        });
      })
      .catch(function () {
        if (progress) { progress.hidden = true; }
        form.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
        if (retry) { retry.disabled = false; }
        showNetworkError(form);
      })
      .then(function () { busy = false; });
  });
})();
