// kefu page runtime: live events over /ws with reconnect, shown as toasts and re-dispatched as DOM
// events ("kefu:<type>") so pages can react without knowing about the socket.
(function () {
  "use strict";
  if (document.body.dataset.signedIn !== "true") return;
  var status = document.getElementById("live-status");
  var delay = 1000;

  function toast(text) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast";
    el.textContent = text; // textContent: event data is never parsed as HTML
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, 6000);
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + "/ws");
    socket.onopen = function () { delay = 1000; if (status) status.classList.add("on"); };
    socket.onmessage = function (msg) {
      var event;
      try { event = JSON.parse(msg.data); } catch (e) { return; }
      if (event.type === "ping" || event.type === "hello") return;
      document.dispatchEvent(new CustomEvent("kefu:" + event.type, { detail: event }));
      if (event.data && event.data.message) toast(event.data.message);
    };
    socket.onclose = function (ev) {
      if (status) status.classList.remove("on");
      if (ev.code === 4401 || ev.code === 4403) return; // signed out or refused: do not hammer
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  window.kefu = { toast: toast };
  connect();
})();
