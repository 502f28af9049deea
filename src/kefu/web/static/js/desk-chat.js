// The agent's web chats on the desk: /chat/agent/ws lists the agent's open chats and streams their
// messages by sequence number (on every reconnect the desk says what it has, so it gets exactly the rest);
// messages and files go through the REST API; typing goes both ways. While a chat is chosen, the knowledge
// panel's "insert" puts the answer into the chat box (and records the article as used for the chat's
// contact). The socket also tells the server the agent is still here: without it for longer than the
// grace period, the agent's chats go back to their queue. A chat that ended stays as a struck-through tab
// until the agent closes it. Everything shown goes in through textContent.
(function () {
  "use strict";
  var box = document.getElementById("desk-chat");
  if (!box) return;
  var tabs = document.getElementById("desk-chat-tabs");
  var log = document.getElementById("desk-chat-log");
  var input = document.getElementById("desk-chat-input");
  var form = document.getElementById("desk-chat-form");
  var fileInput = document.getElementById("desk-chat-file");
  var endButton = document.getElementById("desk-chat-end");
  var typingLine = document.getElementById("desk-chat-typing");
  var visitorLine = document.getElementById("desk-chat-visitor");
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var URL_RE = /(https?:\/\/[^\s<>"']+)/g;
  var chats = {}; // public id -> {id, interaction_id, name, last_seq, messages: [], unread, closed, tab}
  var active = null;
  var socket = null;
  var backoff = 500;
  var typingSentAt = 0;
  var typingTimer = null;
  var remoteTyping = null;
  var lastFocus = "chat";

  function toast(text) { if (window.kefu && window.kefu.toast) window.kefu.toast(text); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function newId() {
    var bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return "d" + Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  function linkified(text) {
    var frag = document.createDocumentFragment();
    var last = 0;
    String(text).replace(URL_RE, function (url, _g, index) {
      if (index > last) frag.appendChild(document.createTextNode(text.slice(last, index)));
      var a = el("a", "", url);
      a.href = url;
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      frag.appendChild(a);
      last = index + url.length;
      return url;
    });
    if (last < text.length) frag.appendChild(document.createTextNode(text.slice(last)));
    return frag;
  }
  function post(url, body, isForm) {
    var headers = { Accept: "application/json", "X-CSRF-Token": csrf };
    if (!isForm) headers["Content-Type"] = "application/json";
    return fetch(url, { method: "POST", credentials: "same-origin", headers: headers, body: isForm ? body : JSON.stringify(body) })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (data) {
          if (response.ok) return data;
          throw new Error((data && data.error && data.error.message) || String(response.status));
        });
      });
  }

  // --- tabs -------------------------------------------------------------------------------------
  function tabLabel(chat) {
    chat.tab.textContent = chat.name || "?";
    if (chat.unread) chat.tab.appendChild(el("span", "unread", String(chat.unread)));
    chat.tab.classList.toggle("closed", !!chat.closed);
  }

  function ensure(item) {
    var chat = chats[item.public_id];
    var isNew = !chat;
    if (isNew) {
      chat = chats[item.public_id] = { public_id: item.public_id, last_seq: 0, messages: [], unread: 0, closed: false };
      chat.tab = el("button", "");
      chat.tab.type = "button";
      chat.tab.setAttribute("role", "tab");
      chat.tab.setAttribute("aria-selected", "false");
      chat.tab.setAttribute("aria-controls", "desk-chat-panel");
      chat.tab.setAttribute("data-chat", item.public_id);
      chat.tab.addEventListener("click", function () { select(item.public_id, true); });
      tabs.appendChild(chat.tab);
    }
    chat.id = item.id;
    chat.interaction_id = item.interaction_id;
    chat.name = item.visitor_name;
    chat.contact = [item.visitor_email, item.visitor_phone].filter(Boolean).join(" · ");
    chat.closed = item.status === "closed";
    tabLabel(chat);
    box.hidden = false;
    if (isNew) {
      // The first chat, or one taking the place of a chat that ended, is chosen at once.
      if (!active || !chats[active] || chats[active].closed) select(item.public_id, false);
      toast(box.dataset.msgNew + ": " + (item.visitor_name || ""));
    } else if (active === item.public_id) {
      setEnabled(!chat.closed);
    }
    return chat;
  }

  function select(publicId, loadPop) {
    var chat = chats[publicId];
    if (!chat) return;
    active = publicId;
    lastFocus = "chat";
    Object.keys(chats).forEach(function (key) {
      chats[key].tab.setAttribute("aria-selected", key === publicId ? "true" : "false");
    });
    chat.unread = 0;
    tabLabel(chat);
    box.setAttribute("data-active-chat", publicId);
    box.setAttribute("data-interaction-id", String(chat.interaction_id));
    visitorLine.textContent = [chat.name, chat.contact].filter(Boolean).join(" · ");
    log.textContent = "";
    chat.messages.forEach(function (m) { log.appendChild(render(m)); });
    log.scrollTop = log.scrollHeight;
    typingLine.textContent = "";
    setEnabled(!chat.closed);
    // The contact's screen pop (customer, case, wrap-up) follows the chosen chat.
    var link = loadPop && document.querySelector('#desk-contact-list a[data-interaction-id="' + chat.interaction_id + '"]');
    if (link) link.click();
  }

  function setEnabled(on) {
    input.disabled = !on;
    document.getElementById("desk-chat-send").disabled = !on;
    fileInput.disabled = !on;
    // An ended chat's button closes its tab (the contact's wrap-up stays in the contact list).
    endButton.textContent = on ? box.dataset.msgEnd : box.dataset.msgCloseTab;
    endButton.setAttribute("data-action", on ? "end" : "close");
  }

  function closeTab(publicId) {
    var chat = chats[publicId];
    if (!chat) return;
    chat.tab.remove();
    delete chats[publicId];
    if (active !== publicId) return;
    active = null;
    var next = Object.keys(chats).filter(function (key) { return !chats[key].closed; })[0] || Object.keys(chats)[0];
    if (next) {
      select(next, true);
    } else {
      log.textContent = "";
      visitorLine.textContent = "";
      typingLine.textContent = "";
      box.removeAttribute("data-active-chat");
      box.removeAttribute("data-interaction-id");
      box.hidden = true;
    }
  }

  function render(m) {
    var li = el("li", m.sender);
    li.setAttribute("data-seq", String(m.seq));
    if (m.sender !== "system") li.appendChild(el("span", "who", m.author || ""));
    if (m.attachment) {
      var chat = chats[m.conversation];
      var a = el("a", "", m.attachment.filename);
      a.href = "/api/v1/chat/conversations/" + chat.id + "/attachments/" + m.attachment.id;
      li.appendChild(a);
    } else {
      li.appendChild(linkified(m.text || ""));
    }
    return li;
  }

  function onMessage(m) {
    var chat = chats[m.conversation];
    if (!chat || m.seq <= chat.last_seq) return; // never shown twice
    chat.last_seq = m.seq;
    chat.messages.push(m);
    if (m.sender === "visitor" && active === m.conversation) typingLine.textContent = "";
    if (active === m.conversation) {
      log.appendChild(render(m));
      log.scrollTop = log.scrollHeight;
    } else {
      chat.unread += 1;
      tabLabel(chat);
    }
  }

  function onState(frame) {
    var chat = chats[frame.conversation];
    if (!chat) return;
    if (frame.status === "closed" || frame.status === "waiting") {
      chat.closed = true;
      tabLabel(chat);
      if (active === frame.conversation) setEnabled(false);
      if (frame.status === "waiting") toast(box.dataset.msgRequeued);
    }
  }

  // --- the socket -------------------------------------------------------------------------------
  function resume() {
    var after = {};
    Object.keys(chats).forEach(function (key) { after[key] = chats[key].last_seq; });
    if (socket && socket.readyState === 1) socket.send(JSON.stringify({ type: "resume", after: after }));
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + "/chat/agent/ws");
    socket = ws;
    ws.onopen = function () { backoff = 500; box.setAttribute("data-connected", "true"); };
    ws.onmessage = function (msg) {
      var frame;
      try { frame = JSON.parse(msg.data); } catch (e) { return; }
      if (frame.type === "conversations") {
        var listed = {};
        (frame.items || []).forEach(function (item) { listed[item.public_id] = ensure(item); });
        // A chat no longer listed is no longer this agent's (ended, or sent back while the desk was away).
        Object.keys(chats).forEach(function (key) {
          if (!listed[key] && !chats[key].closed) onState({ conversation: key, status: "closed" });
        });
        var after = {};
        Object.keys(listed).forEach(function (key) { after[key] = chats[key].last_seq; });
        ws.send(JSON.stringify({ type: "resume", after: after }));
      } else if (frame.type === "message") {
        onMessage(frame);
      } else if (frame.type === "state") {
        onState(frame);
      } else if (frame.type === "typing") {
        if (frame.conversation === active) {
          typingLine.textContent = frame.on ? box.dataset.msgTyping : "";
          clearTimeout(remoteTyping);
          if (frame.on) remoteTyping = setTimeout(function () { typingLine.textContent = ""; }, 6000);
        }
      }
    };
    ws.onclose = function (ev) {
      box.removeAttribute("data-connected");
      if (socket !== ws) return;
      socket = null;
      if (ev.code === 4401 || ev.code === 4403) return;
      setTimeout(connect, backoff + Math.random() * 250);
      backoff = Math.min(backoff * 2, 15000);
    };
  }

  // --- sending ----------------------------------------------------------------------------------
  function send() {
    var chat = chats[active];
    var text = input.value.trim();
    if (!chat || !text || chat.closed) return;
    var id = newId();
    input.value = "";
    sendTyping(false);
    post("/api/v1/chat/conversations/" + chat.id + "/messages", { text: text, client_msg_id: id }).catch(function (err) {
      // Kept for another try: the same client id is stored once whatever happened to the first attempt.
      if (!input.value) input.value = text;
      toast(box.dataset.msgFailed + " " + err.message);
    });
  }

  function sendTyping(on) {
    var chat = chats[active];
    if (!on) { typingSentAt = 0; clearTimeout(typingTimer); }
    if (chat && socket && socket.readyState === 1) {
      socket.send(JSON.stringify({ type: "typing", conversation: chat.public_id, on: !!on }));
    }
  }

  form.addEventListener("submit", function (ev) { ev.preventDefault(); send(); });
  input.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
  });
  input.addEventListener("input", function () {
    var now = Date.now();
    if (now - typingSentAt > 1500) { sendTyping(true); typingSentAt = now; }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(function () { sendTyping(false); }, 3000);
  });
  fileInput.addEventListener("change", function () {
    var chat = chats[active];
    var file = fileInput.files && fileInput.files[0];
    fileInput.value = "";
    if (!chat || !file) return;
    var data = new FormData();
    data.append("file", file, file.name);
    post("/api/v1/chat/conversations/" + chat.id + "/attachments?client_msg_id=" + newId(), data, true)
      .catch(function (err) { toast(box.dataset.msgFailed + " " + err.message); });
  });
  endButton.addEventListener("click", function () {
    var chat = chats[active];
    if (!chat) return;
    if (chat.closed) { closeTab(chat.public_id); return; }
    post("/api/v1/chat/conversations/" + chat.id + "/end", {}).then(function () {
      var link = document.querySelector('#desk-contact-list a[data-interaction-id="' + chat.interaction_id + '"]');
      if (link) link.click(); // the wrap-up form of the contact
    }).catch(function (err) { toast(box.dataset.msgFailed + " " + err.message); });
  });

  // --- the knowledge panel's "insert" while a chat is chosen ------------------------------------
  document.addEventListener("focusin", function (ev) {
    if (ev.target === input) lastFocus = "chat";
    else if (ev.target && ev.target.id === "desk-reply-body") lastFocus = "reply";
  });
  // Capture phase on window: runs before desk.js's handler, which would put the answer in the work-order reply.
  window.addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest("button.desk-insert");
    var chat = chats[active];
    if (!button || !chat || chat.closed || box.hidden || lastFocus !== "chat") return;
    var hit = button.closest("[data-article-id]");
    var answer = hit && hit.querySelector(".desk-answer");
    if (!answer) return;
    ev.stopPropagation();
    ev.preventDefault();
    var text = answer.textContent.trim();
    input.value = input.value.trim() ? input.value.replace(/\s+$/, "") + "\n\n" + text : text;
    input.focus();
    var body = new URLSearchParams();
    body.set("article_id", hit.getAttribute("data-article-id"));
    fetch("/desk/interactions/" + encodeURIComponent(chat.interaction_id) + "/articles", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded" },
      body: body.toString(),
    }).then(function (response) {
      if (response.ok) {
        button.classList.add("used");
        button.textContent = box.dataset.msgInserted;
      }
    });
  }, true);

  window.kefuDeskChat = { drop: function () { if (socket) socket.close(); }, resume: resume };
  connect();
})();
