/* kefu web chat widget. Embed with one tag:
 *   <script src="https://kefu-host/static/chat/kefu-chat.js" data-kefu-widget="default" async></script>
 * Renders a launcher and a chat panel inside a shadow root (the host page's CSS does not reach in), in the
 * page's language (zh-CN or en). Talks to the kefu host the script came from, without cookies: the chat's
 * token (kept in localStorage, with whether the panel is open) proves which chat is the visitor's. Messages
 * are numbered per chat; a page (re)load shows the whole chat again from the server, and every reconnect
 * asks for what came after the last number shown, so nothing is missed or shown twice; messages not yet
 * acknowledged are sent again under the same client id (stored once). An ended chat offers a new one.
 * Plain JavaScript, no build step; everything from the server goes in through textContent. */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-kefu-widget]");
  if (!script || window.__kefuChatLoaded) return;
  window.__kefuChatLoaded = true;
  var BASE = new URL(script.src, location.href).origin;
  var KEY = script.getAttribute("data-kefu-widget") || "default";
  var LANG = /^en\b/i.test(document.documentElement.lang || navigator.language || "") ? "en" : "zh_CN";
  var STORE = "kefu-chat:" + BASE + ":" + KEY;
  var URL_RE = /(https?:\/\/[^\s<>"']+)/g;

  var labels = {};
  var config = null;
  var saved = load();
  var socket = null;
  var backoff = 500;
  var reconnectTimer = null;
  var pending = {}; // client_msg_id -> {text, el}
  var typingTimer = null;
  var typingSentAt = 0;
  var remoteTypingTimer = null;
  var closed = false;
  var shownSeq = 0; // the last message number shown in this page (a reload starts from 0: the whole chat)

  function load() {
    try { return JSON.parse(localStorage.getItem(STORE) || "null"); } catch (e) { return null; }
  }
  function save() {
    try {
      if (saved) localStorage.setItem(STORE, JSON.stringify(saved));
      else localStorage.removeItem(STORE);
    } catch (e) { /* private mode: the chat still works until the page is left */ }
  }
  function t(name, values) {
    var text = labels[name] || name;
    Object.keys(values || {}).forEach(function (k) { text = text.replace("%(" + k + ")s", String(values[k])); });
    return text;
  }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function newId() {
    var bytes = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    return "w" + Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function api(method, path, body, isForm) {
    var headers = { Accept: "application/json" };
    if (saved && saved.token) headers["X-Chat-Token"] = saved.token;
    var options = { method: method, headers: headers, credentials: "omit", mode: "cors" };
    if (body !== undefined) {
      if (isForm) { options.body = body; } else { headers["Content-Type"] = "application/json"; options.body = JSON.stringify(body); }
    }
    return fetch(BASE + path, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.ok) return data;
        var err = new Error((data && data.error && data.error.message) || String(response.status));
        err.status = response.status;
        err.details = data && data.error && data.error.details;
        throw err;
      });
    });
  }

  // --- the shadow DOM ---------------------------------------------------------------------------
  var host = el("div", { id: "kefu-chat-widget" });
  var root = host.attachShadow({ mode: "open" });
  var style = el("style");
  style.textContent = [
    ":host{all:initial}",
    "*{box-sizing:border-box;font:14px/1.5 system-ui,-apple-system,'PingFang SC','Microsoft YaHei',sans-serif}",
    ".launcher{position:fixed;right:20px;bottom:20px;z-index:2147483000;border:0;border-radius:24px;padding:12px 18px;background:#1a73e8;color:#fff;cursor:pointer;box-shadow:0 2px 10px rgba(0,0,0,.25)}",
    ".panel{position:fixed;right:20px;bottom:76px;z-index:2147483000;width:360px;max-width:calc(100vw - 40px);height:520px;max-height:calc(100vh - 100px);display:flex;flex-direction:column;background:#fff;color:#202124;border-radius:10px;box-shadow:0 4px 24px rgba(0,0,0,.3);overflow:hidden}",
    ".panel[hidden]{display:none}",
    "header{display:flex;justify-content:space-between;align-items:center;background:#1a73e8;color:#fff;padding:10px 14px}",
    "header button{background:transparent;border:0;color:#fff;font-size:18px;cursor:pointer}",
    ".body{flex:1;overflow:auto;padding:12px}",
    "form.prechat label{display:block;margin:0 0 8px}",
    "form.prechat input,form.prechat textarea{display:block;width:100%;padding:6px 8px;border:1px solid #c4c7c5;border-radius:6px;margin-top:2px}",
    "form.prechat .bad{border-color:#d93025}",
    ".req{color:#d93025}",
    "button.primary{background:#1a73e8;color:#fff;border:0;border-radius:6px;padding:7px 14px;cursor:pointer}",
    "button.plain{background:#f1f3f4;color:#202124;border:0;border-radius:6px;padding:5px 10px;cursor:pointer}",
    ".err{color:#d93025;margin:6px 0}",
    "ol.log{list-style:none;margin:0;padding:0}",
    "ol.log li{margin:6px 0;max-width:85%;padding:6px 10px;border-radius:10px;white-space:pre-wrap;word-wrap:break-word}",
    "li.visitor{margin-left:auto;background:#d2e3fc}",
    "li.agent{background:#f1f3f4}",
    "li.system{max-width:100%;text-align:center;color:#5f6368;font-size:12px;background:transparent}",
    "li.pending{opacity:.6}",
    "li.failed{outline:1px solid #d93025}",
    ".who{display:block;font-size:11px;color:#5f6368}",
    ".status{padding:4px 12px;font-size:12px;color:#5f6368;border-top:1px solid #eee;min-height:24px}",
    ".typing{padding:0 12px;font-size:12px;color:#5f6368;height:18px}",
    "form.send{display:flex;gap:6px;padding:8px;border-top:1px solid #eee;align-items:flex-end}",
    "form.send textarea{flex:1;resize:none;height:38px;padding:6px;border:1px solid #c4c7c5;border-radius:6px}",
    ".tools{display:flex;gap:6px;flex-wrap:wrap;padding:0 8px 8px}",
    ".tools input[type=email]{flex:1;min-width:120px;padding:4px 6px;border:1px solid #c4c7c5;border-radius:6px}",
    "a{color:#1a73e8}",
  ].join("\n");
  root.appendChild(style);

  var launcher = el("button", { type: "button", class: "launcher", "aria-expanded": "false", part: "launcher" });
  var panel = el("section", { class: "panel", role: "dialog", "aria-modal": "false" });
  panel.hidden = true;
  var header = el("header");
  var title = el("strong", { id: "kefu-chat-title" });
  var closeButton = el("button", { type: "button", class: "close" }, "×");
  header.appendChild(title);
  header.appendChild(closeButton);
  var body = el("div", { class: "body" });
  var statusLine = el("div", { class: "status", role: "status", "aria-live": "polite" });
  var typingLine = el("div", { class: "typing", "aria-live": "polite" });
  panel.appendChild(header);
  panel.appendChild(body);
  root.appendChild(launcher);
  root.appendChild(panel);
  panel.setAttribute("aria-labelledby", "kefu-chat-title");

  launcher.addEventListener("click", function () { toggle(panel.hidden); });
  closeButton.addEventListener("click", function () { toggle(false); });
  function toggle(open) {
    panel.hidden = !open;
    launcher.setAttribute("aria-expanded", open ? "true" : "false");
    // A chat in progress keeps its panel open across page loads.
    if (saved && saved.public_id && !!saved.open !== !!open) { saved.open = !!open; save(); }
    if (open) {
      var focus = root.querySelector("textarea, input");
      if (focus) focus.focus();
    }
  }

  // --- the pre-chat form ------------------------------------------------------------------------
  function field(name, type, required, multiline) {
    var label = el("label", {}, t(name));
    if (required) label.appendChild(el("span", { class: "req", "aria-hidden": "true" }, " *"));
    var input = el(multiline ? "textarea" : "input", { name: name, "data-field": name });
    if (!multiline) input.setAttribute("type", type);
    if (multiline) input.setAttribute("rows", "3");
    if (required) input.setAttribute("aria-required", "true");
    label.appendChild(input);
    return label;
  }

  function showPrechat() {
    body.textContent = "";
    if (foot) foot.hidden = true;
    panel.removeAttribute("data-status");
    var required = config.required || [];
    var form = el("form", { class: "prechat", novalidate: "novalidate" });
    form.appendChild(field("name", "text", required.indexOf("name") >= 0));
    var contactRequired = required.indexOf("contact") >= 0;
    form.appendChild(field("email", "email", required.indexOf("email") >= 0));
    form.appendChild(field("phone", "tel", required.indexOf("phone") >= 0));
    if (contactRequired) form.appendChild(el("p", { class: "hint" }, "* " + t("contact")));
    form.appendChild(field("question", "text", required.indexOf("question") >= 0, true));
    var error = el("p", { class: "err", role: "alert" });
    form.appendChild(error);
    var submit = el("button", { type: "submit", class: "primary" }, t("start"));
    form.appendChild(submit);
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var values = {};
      ["name", "email", "phone", "question"].forEach(function (name) {
        var input = form.querySelector('[data-field="' + name + '"]');
        input.classList.remove("bad");
        var v = input.value.trim();
        if (v) values[name] = v;
      });
      var missing = required.filter(function (f) {
        return f === "contact" ? !(values.email || values.phone) : !values[f];
      });
      if (missing.length) {
        error.textContent = t("required");
        missing.forEach(function (f) {
          (f === "contact" ? ["email", "phone"] : [f]).forEach(function (n) {
            var input = form.querySelector('[data-field="' + n + '"]');
            if (input) input.classList.add("bad");
          });
        });
        return;
      }
      values.widget = KEY;
      values.locale = LANG;
      submit.disabled = true;
      api("POST", "/api/v1/chat/visitor/conversations", values)
        .then(function (started) {
          saved = { public_id: started.public_id, token: started.token, email: values.email || "", open: true };
          save();
          showChat();
          connect();
        })
        .catch(function (err) {
          submit.disabled = false;
          error.textContent = err.message;
          var bad = err.details && err.details.field;
          var input = bad && form.querySelector('[data-field="' + bad + '"]');
          if (input) { input.classList.add("bad"); input.focus(); }
        });
    });
    body.appendChild(form);
  }

  // --- the chat ---------------------------------------------------------------------------------
  var log, foot, input, sendForm, tools, fileInput, emailInput;

  function showChat() {
    body.textContent = "";
    log = el("ol", { class: "log", "aria-live": "polite" });
    body.appendChild(log);
    shownSeq = 0;
    pending = {};
    if (!foot) {
      // Built once: the typing note, the status line, the send box and the tools under the messages.
      foot = el("div", { class: "foot" });
      panel.appendChild(foot);
      foot.appendChild(typingLine);
      foot.appendChild(statusLine);
      sendForm = el("form", { class: "send" });
      input = el("textarea", { "aria-label": t("placeholder"), placeholder: t("placeholder"), maxlength: String(config.max_chars || 4000) });
      var send = el("button", { type: "submit", class: "primary" }, t("send"));
      sendForm.appendChild(input);
      sendForm.appendChild(send);
      foot.appendChild(sendForm);
      tools = el("div", { class: "tools" });
      fileInput = el("input", { type: "file", hidden: "hidden", "aria-label": t("attach") });
      var attach = el("button", { type: "button", class: "plain attach" }, t("attach"));
      emailInput = el("input", { type: "email", "aria-label": t("email"), placeholder: t("email") });
      emailInput.value = (saved && saved.email) || "";
      var transcript = el("button", { type: "button", class: "plain transcript" }, t("transcript"));
      var end = el("button", { type: "button", class: "plain end" }, t("end"));
      var again = el("button", { type: "button", class: "primary new", hidden: "hidden" }, t("new_chat"));
      tools.appendChild(attach);
      tools.appendChild(fileInput);
      tools.appendChild(emailInput);
      tools.appendChild(transcript);
      tools.appendChild(end);
      tools.appendChild(again);
      foot.appendChild(tools);
      sendForm.addEventListener("submit", function (ev) { ev.preventDefault(); sendText(); });
      input.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendText(); }
      });
      input.addEventListener("input", onTyping);
      attach.addEventListener("click", function () { fileInput.click(); });
      fileInput.addEventListener("change", sendFile);
      transcript.addEventListener("click", askTranscript);
      end.addEventListener("click", endChat);
      again.addEventListener("click", newChat);
    }
    foot.hidden = false;
    emailInput.value = (saved && saved.email) || "";
    setClosed(false);
    statusLine.textContent = "";
    typingLine.textContent = "";
  }

  // After a chat ended: forget it and show the pre-chat form again.
  function newChat() {
    var old = socket;
    socket = null;
    clearTimeout(reconnectTimer);
    if (old) old.close();
    saved = null;
    save();
    showPrechat();
    var first = root.querySelector("form.prechat input");
    if (first) first.focus();
  }

  function linkified(text) {
    var frag = document.createDocumentFragment();
    var last = 0;
    String(text).replace(URL_RE, function (url, _g, index) {
      if (index > last) frag.appendChild(document.createTextNode(text.slice(last, index)));
      var a = el("a", { href: url, target: "_blank", rel: "noopener noreferrer nofollow" }, url);
      frag.appendChild(a);
      last = index + url.length;
      return url;
    });
    if (last < text.length) frag.appendChild(document.createTextNode(text.slice(last)));
    return frag;
  }

  function render(message) {
    var li = el("li", { class: message.sender, "data-seq": String(message.seq) });
    if (message.sender === "agent") li.appendChild(el("span", { class: "who" }, message.author || ""));
    if (message.attachment) {
      var href = BASE + "/api/v1/chat/visitor/" + encodeURIComponent(saved.public_id) + "/attachments/" +
        message.attachment.id + "?token=" + encodeURIComponent(saved.token);
      li.appendChild(el("a", { href: href, rel: "noopener noreferrer", download: message.attachment.filename }, message.attachment.filename));
    } else {
      li.appendChild(linkified(message.text || ""));
    }
    return li;
  }

  function onMessage(message) {
    if (!saved || !log || message.seq <= shownSeq) return; // already shown: never twice
    var mine = message.client_msg_id && pending[message.client_msg_id];
    if (mine) {
      mine.el.remove();
      delete pending[message.client_msg_id];
    }
    log.appendChild(render(message));
    shownSeq = message.seq;
    if (message.sender === "agent") typingLine.textContent = "";
    body.scrollTop = body.scrollHeight;
  }

  function showState(state) {
    panel.setAttribute("data-status", state.status || "");
    if (state.status === "waiting" && state.position && !state.ringing) {
      statusLine.setAttribute("data-position", String(state.position));
    } else {
      statusLine.removeAttribute("data-position");
    }
    if (state.status === "closed") {
      setClosed();
      return;
    }
    if (state.status === "waiting") {
      if (state.ringing) { statusLine.textContent = t("ringing"); return; }
      var text = state.position ? t("position", { position: state.position }) : "";
      if (state.expected_wait_seconds) text += " " + t("expected", { minutes: Math.max(1, Math.round(state.expected_wait_seconds / 60)) });
      statusLine.textContent = text;
    } else {
      statusLine.textContent = "";
    }
  }

  function setClosed(on) {
    closed = on !== false;
    if (closed) {
      statusLine.textContent = t("closed");
      panel.setAttribute("data-status", "closed");
      typingLine.textContent = "";
    }
    if (input) input.disabled = closed;
    if (sendForm) sendForm.querySelector("button").disabled = closed;
    if (tools) {
      tools.querySelector(".attach").disabled = closed;
      tools.querySelector(".end").disabled = closed;
      tools.querySelector(".new").hidden = !closed;
    }
  }

  function sendText() {
    var text = input.value.trim();
    if (!text || closed) return;
    input.value = "";
    var id = newId();
    var li = el("li", { class: "visitor pending", "data-client-id": id });
    li.appendChild(linkified(text));
    log.appendChild(li);
    body.scrollTop = body.scrollHeight;
    pending[id] = { text: text, el: li };
    sendPending(id);
    sendTyping(false);
  }

  function sendPending(id) {
    if (socket && socket.readyState === 1 && pending[id]) {
      socket.send(JSON.stringify({ type: "message", client_msg_id: id, text: pending[id].text }));
    }
  }

  function onTyping() {
    var now = Date.now();
    if (now - typingSentAt > 1500) { sendTyping(true); typingSentAt = now; }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(function () { sendTyping(false); }, 3000);
  }

  function sendTyping(on) {
    if (!on) { typingSentAt = 0; clearTimeout(typingTimer); }
    if (socket && socket.readyState === 1) socket.send(JSON.stringify({ type: "typing", on: !!on }));
  }

  function sendFile() {
    var file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (!file || closed) return;
    if (config.max_bytes && file.size > config.max_bytes) { statusLine.textContent = t("failed"); return; }
    var form = new FormData();
    form.append("file", file, file.name);
    var path = "/api/v1/chat/visitor/" + encodeURIComponent(saved.public_id) + "/attachments?client_msg_id=" + newId();
    api("POST", path, form, true).catch(function (err) { statusLine.textContent = t("failed") + " " + err.message; });
  }

  function askTranscript() {
    var email = emailInput.value.trim();
    api("POST", "/api/v1/chat/visitor/" + encodeURIComponent(saved.public_id) + "/transcript", email ? { email: email, request_id: newId() } : { request_id: newId() })
      .then(function () { statusLine.textContent = t("transcript_sent"); })
      .catch(function (err) { statusLine.textContent = err.message; emailInput.focus(); });
  }

  function endChat() {
    api("POST", "/api/v1/chat/visitor/" + encodeURIComponent(saved.public_id) + "/end")
      .then(function () { setClosed(true); })
      .catch(function (err) { statusLine.textContent = err.message; });
  }

  // --- the socket -------------------------------------------------------------------------------
  function connect() {
    if (!saved) return;
    clearTimeout(reconnectTimer);
    var url = BASE.replace(/^http/, "ws") + "/chat/ws/" + encodeURIComponent(saved.public_id) + "?token=" + encodeURIComponent(saved.token);
    var ws = new WebSocket(url);
    socket = ws;
    ws.onopen = function () {
      backoff = 500;
      ws.send(JSON.stringify({ type: "resume", after_seq: shownSeq }));
      // Anything typed while offline goes now; the server stores each client id once.
      Object.keys(pending).forEach(sendPending);
    };
    ws.onmessage = function (msg) {
      var frame;
      try { frame = JSON.parse(msg.data); } catch (e) { return; }
      if (frame.type === "message") onMessage(frame);
      else if (frame.type === "state") showState(frame);
      else if (frame.type === "typing") {
        typingLine.textContent = frame.on ? t("typing") : "";
        clearTimeout(remoteTypingTimer);
        if (frame.on) remoteTypingTimer = setTimeout(function () { typingLine.textContent = ""; }, 6000);
      } else if (frame.type === "error" && frame.client_msg_id && pending[frame.client_msg_id]) {
        pending[frame.client_msg_id].el.classList.add("failed");
        pending[frame.client_msg_id].el.title = frame.message || t("failed");
        delete pending[frame.client_msg_id];
      }
    };
    ws.onclose = function (ev) {
      if (socket !== ws) return;
      socket = null;
      if (ev.code === 4401) { saved = null; save(); showPrechat(); return; } // the chat is gone: start over
      if (ev.code === 4403) return;
      if (!closed) statusLine.textContent = t("reconnecting");
      reconnectTimer = setTimeout(connect, backoff + Math.random() * 250);
      backoff = Math.min(backoff * 2, 15000);
    };
  }

  // A test hook (and a help for support staff): drop the socket as a network failure would.
  window.kefuChat = { drop: function () { if (socket) socket.close(); } };

  function start() {
    fetch(BASE + "/api/v1/chat/visitor/widgets/" + encodeURIComponent(KEY) + "?lang=" + LANG, { credentials: "omit", mode: "cors" })
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.json(); })
      .then(function (data) {
        config = data;
        labels = data.labels || {};
        launcher.textContent = t("launcher");
        title.textContent = t("title");
        closeButton.setAttribute("aria-label", t("close"));
        document.body.appendChild(host);
        if (saved && saved.public_id) {
          showChat();
          connect();
          if (saved.open) toggle(true);
        } else {
          showPrechat();
        }
      })
      .catch(function () { /* no widget configured: show nothing */ });
  }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
