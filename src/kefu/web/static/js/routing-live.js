// The supervisors' live view: the panel is rendered on the server; this file swaps in a fresh one
// (GET /routing/live/panel) shortly after routing events arrive over /ws (kefu.js re-dispatches them
// as "kefu:<type>" DOM events) and every few seconds, ticks the clocks in between, and sends the
// supervisor's moves (a contact or an agent to other queues) to the REST API.
(function () {
  "use strict";
  var root = document.getElementById("routing-live");
  if (!root) return;
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var every = (parseInt(root.dataset.refreshSeconds, 10) || 5) * 1000;
  // Clocks count from when their panel arrived, on this browser's monotonic clock: the server's
  // seconds plus the time since, so a skewed client clock does not matter.
  var renderedAt = performance.now();
  var timer = null;
  var loading = false;
  var again = false;

  function panel() {
    return document.getElementById("rl-panel");
  }

  function toast(text) {
    if (window.kefu && window.kefu.toast) window.kefu.toast(text);
  }

  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var sec = s % 60;
    var mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(sec).padStart(2, "0");
  }

  function tick() {
    var elapsed = (performance.now() - renderedAt) / 1000;
    root.querySelectorAll(".rl-clock[data-seconds]").forEach(function (el) {
      var base = parseInt(el.getAttribute("data-seconds"), 10);
      if (!isNaN(base)) el.textContent = duration(base + elapsed);
    });
  }

  // A supervisor in the middle of choosing (a select focused, a queue editor open) keeps their
  // controls: the swap waits until they are done.
  function busy() {
    var p = panel();
    if (!p) return false;
    var active = document.activeElement;
    if (active && p.contains(active) && /^(SELECT|INPUT)$/.test(active.tagName)) return true;
    return !!p.querySelector("details.rl-edit[open]");
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  function refresh() {
    if (loading) {
      again = true;
      return;
    }
    if (busy()) {
      schedule(1000);
      return;
    }
    loading = true;
    fetch("/routing/live/panel", { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error(String(response.status));
        return response.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("rl-panel");
        var current = panel();
        if (!fresh || !current) return;
        if (busy()) {
          again = true;
          return;
        }
        current.replaceWith(document.importNode(fresh, true));
        renderedAt = performance.now();
        tick();
      })
      .catch(function () {
        /* the next periodic refresh tries again */
      })
      .then(function () {
        loading = false;
        if (again) {
          again = false;
          schedule(300);
        } else {
          schedule(every);
        }
      });
  }

  ["kefu:routing.presence", "kefu:routing.entry"].forEach(function (name) {
    // Debounced: a burst of events (a contact offered, answered, an agent on contact) is one fetch.
    document.addEventListener(name, function () { schedule(300); });
  });

  function send(method, url, body) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    }).then(function (response) {
      if (response.ok) return response.json();
      return response
        .json()
        .catch(function () { return {}; })
        .then(function (data) {
          var message = data && data.error && data.error.message;
          throw new Error(message || root.dataset.msgFailed || "failed");
        });
    });
  }

  root.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.classList.contains("rl-move")) {
      ev.preventDefault();
      var target = parseInt(form.elements.queue_id.value, 10);
      var id = form.getAttribute("data-interaction-id");
      form.querySelector("button").disabled = true;
      send("POST", "/api/v1/routing/entries/" + encodeURIComponent(id) + "/move", { queue_id: target })
        .then(function () { toast(root.dataset.msgMoved || "Moved"); })
        .catch(function (err) { toast(err.message); })
        .then(function () {
          if (document.activeElement) document.activeElement.blur();
          schedule(0);
        });
    } else if (form.classList.contains("rl-agent-queues")) {
      ev.preventDefault();
      var add = [];
      var remove = [];
      form.querySelectorAll('input[name="queue_id"]').forEach(function (box) {
        var was = box.getAttribute("data-member") === "1";
        var value = parseInt(box.value, 10);
        if (box.checked && !was) add.push(value);
        if (!box.checked && was) remove.push(value);
      });
      var details = form.closest("details");
      if (!add.length && !remove.length) {
        toast(root.dataset.msgNothing || "Nothing changed");
        if (details) details.open = false;
        return;
      }
      var user = form.getAttribute("data-user-id");
      form.querySelector("button").disabled = true;
      send("PUT", "/api/v1/routing/agents/" + encodeURIComponent(user) + "/queues", { add: add, remove: remove })
        .then(function () { toast(root.dataset.msgSaved || "Saved"); })
        .catch(function (err) { toast(err.message); })
        .then(function () {
          if (details) details.open = false;
          if (document.activeElement) document.activeElement.blur();
          schedule(0);
        });
    }
  });

  setInterval(tick, 1000);
  schedule(every);
})();
