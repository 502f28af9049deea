// The agent desktop: screen pop on "desk.pop" events, the contact list, the knowledge panel's "insert",
// and keyboard shortcuts. kefu.js owns the /ws socket and re-dispatches its events as "kefu:<type>" DOM
// events; this file only listens. Everything shown from event data goes in through textContent.
(function () {
  "use strict";
  var desk = document.getElementById("desk");
  if (!desk) return;
  var list = document.getElementById("desk-contact-list");
  var pop = document.getElementById("desk-pop");
  var help = document.getElementById("desk-help");
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function toast(text) {
    if (window.kefu && window.kefu.toast) window.kefu.toast(text);
  }

  function currentInteraction() {
    var el = pop.querySelector("[data-interaction-id]");
    return el ? el.getAttribute("data-interaction-id") : "";
  }

  function items() {
    return Array.prototype.slice.call(list.querySelectorAll("li[data-interaction-id]"));
  }

  function markSelected(id) {
    items().forEach(function (li) {
      var link = li.querySelector("a");
      if (li.getAttribute("data-interaction-id") === String(id)) {
        li.classList.add("selected");
        if (link) link.setAttribute("aria-current", "true");
      } else {
        li.classList.remove("selected");
        if (link) link.removeAttribute("aria-current");
      }
    });
    var empty = document.getElementById("desk-no-contacts");
    if (empty) empty.hidden = items().length > 0;
  }

  function loadPop(id) {
    markSelected(id);
    history.replaceState(null, "", "/desk?interaction=" + encodeURIComponent(id));
    if (window.htmx) {
      return window.htmx.ajax("GET", "/desk/pop/" + encodeURIComponent(id), { target: "#desk-pop", swap: "innerHTML" });
    }
    location.assign("/desk?interaction=" + encodeURIComponent(id));
  }

  // A contact the server just routed to this agent: shown at the top of the list at once, from the
  // event alone; the pop panel then loads the full summary.
  function identityText(identity) {
    if (!identity) return "";
    return typeof identity === "object" ? String(identity.value || "") : String(identity);
  }

  function addContact(data) {
    var id = String(data.interaction_id);
    var identity = identityText(data.identity);
    var existing = list.querySelector('li[data-interaction-id="' + id + '"]');
    if (existing) return existing;
    var li = document.createElement("li");
    li.setAttribute("data-interaction-id", id);
    li.className = "desk-contact new";
    var link = document.createElement("a");
    link.href = "/desk?interaction=" + encodeURIComponent(id);
    link.setAttribute("data-interaction-id", id);
    var name = document.createElement("strong");
    name.className = "desk-contact-name";
    name.textContent = data.customer_name || identity || desk.dataset.msgUnknown || "?";
    var meta = document.createElement("span");
    meta.className = "desk-contact-meta";
    meta.textContent = [data.channel || "", identity].filter(Boolean).join(" · ");
    var state = document.createElement("span");
    state.className = "desk-state desk-state-offered";
    state.textContent = desk.dataset.msgNew || "new";
    link.appendChild(name);
    link.appendChild(meta);
    link.appendChild(state);
    li.appendChild(link);
    list.insertBefore(li, list.firstChild);
    return li;
  }

  document.addEventListener("kefu:desk.pop", function (ev) {
    var data = (ev.detail && ev.detail.data) || {};
    if (!data.interaction_id) return;
    addContact(data);
    // An agent in the middle of a reply keeps it: the new contact waits in the list (and the toast).
    var draft = document.getElementById("desk-reply-body");
    if (!draft || !draft.value.trim() || currentInteraction() === String(data.interaction_id)) {
      loadPop(data.interaction_id);
    } else {
      markSelected(currentInteraction());
    }
    var who = data.customer_name || identityText(data.identity);
    toast((desk.dataset.msgPop || "New contact") + (who ? ": " + who : ""));
  });

  // Choosing a contact: loaded into the pop panel without leaving the page (the link works without JS).
  list.addEventListener("click", function (ev) {
    var link = ev.target.closest("a[data-interaction-id]");
    if (!link || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    loadPop(link.getAttribute("data-interaction-id"));
  });

  // --- the knowledge panel: "insert" puts the answer into the reply and records the article as used ---
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("button.desk-insert");
    if (!button) return;
    var hit = button.closest("[data-article-id]");
    var answer = hit && hit.querySelector(".desk-answer");
    var reply = document.getElementById("desk-reply-body");
    if (!answer || !reply) {
      toast(desk.dataset.msgNoReply || "Choose a contact first");
      return;
    }
    var text = answer.textContent.trim();
    reply.value = reply.value.trim() ? reply.value.replace(/\s+$/, "") + "\n\n" + text : text;
    reply.dispatchEvent(new Event("input", { bubbles: true }));
    reply.focus();
    var interaction = currentInteraction();
    if (!interaction) return;
    var body = new URLSearchParams();
    body.set("article_id", hit.getAttribute("data-article-id"));
    fetch("/desk/interactions/" + encodeURIComponent(interaction) + "/articles", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded" },
      body: body.toString(),
    }).then(function (response) {
      if (response.ok) {
        button.classList.add("used");
        button.textContent = desk.dataset.msgInserted || "Inserted";
        var used = document.getElementById("desk-articles-used");
        if (used) used.setAttribute("data-count", String(parseInt(used.getAttribute("data-count") || "0", 10) + 1));
      } else {
        toast(desk.dataset.msgFailed || "Not saved");
      }
    });
  });

  // The search box sends the contact in hand along so the panel can say which answers were used.
  document.addEventListener("htmx:configRequest", function (ev) {
    if (ev.detail.path && ev.detail.path.indexOf("/desk/kb") === 0) {
      var interaction = currentInteraction();
      if (interaction) ev.detail.parameters.interaction_id = interaction;
    }
  });

  // A refused form (422) comes back as the pop panel with its messages: show it like a success.
  document.addEventListener("htmx:beforeSwap", function (ev) {
    if (ev.detail.target === pop && ev.detail.xhr && ev.detail.xhr.status === 422) {
      ev.detail.shouldSwap = true;
      ev.detail.isError = false;
    }
  });

  // After a pop panel swap: the list follows (a reply or wrap-up may have changed a contact's state).
  document.addEventListener("htmx:afterSwap", function (ev) {
    if (ev.detail.target !== pop) return;
    var id = currentInteraction();
    if (id) markSelected(id);
    var state = pop.querySelector("[data-interaction-state]");
    var li = id && list.querySelector('li[data-interaction-id="' + id + '"]');
    if (state && li) {
      var value = state.getAttribute("data-interaction-state");
      if (value === "done") {
        li.remove();
      } else {
        var badge = li.querySelector(".desk-state");
        if (badge) {
          badge.className = "desk-state desk-state-" + value;
          badge.textContent = state.getAttribute("data-interaction-state-label") || value;
        }
      }
    }
  });

  // --- keyboard shortcuts ----------------------------------------------------------------------------
  function typing(target) {
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  function focusFirst(selector) {
    var el = document.querySelector(selector);
    if (el) {
      el.focus();
      if (el.scrollIntoView) el.scrollIntoView({ block: "nearest" });
    }
    return el;
  }

  function move(step) {
    var all = items();
    if (!all.length) return;
    var current = currentInteraction();
    var index = all.findIndex(function (li) { return li.getAttribute("data-interaction-id") === current; });
    var next = index < 0 ? 0 : Math.min(Math.max(index + step, 0), all.length - 1);
    var target = all[next];
    loadPop(target.getAttribute("data-interaction-id"));
    var link = target.querySelector("a");
    if (link) link.focus();
  }

  function toggleHelp(show) {
    if (!help) return;
    help.hidden = show === undefined ? !help.hidden : !show;
    if (!help.hidden) {
      var close = help.querySelector("button");
      if (close) close.focus();
    }
  }

  if (help) {
    help.addEventListener("click", function (ev) {
      if (ev.target === help || ev.target.closest("[data-close]")) toggleHelp(false);
    });
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.defaultPrevented || ev.ctrlKey || ev.metaKey) return;
    if (ev.key === "Escape" && help && !help.hidden) {
      toggleHelp(false);
      ev.preventDefault();
      return;
    }
    if (ev.altKey) {
      // ev.code: Alt+R on a Mac types "®" into ev.key.
      if (ev.code === "KeyR") {
        if (focusFirst("#desk-reply-body")) ev.preventDefault();
      } else if (ev.code === "KeyW") {
        // The reason comes first; a contact already wrapped up shows its summary instead.
        if (focusFirst("#desk-reason") || focusFirst("#desk-wrap-up-summary")) ev.preventDefault();
      }
      return;
    }
    if (typing(ev.target)) return;
    if (ev.key === "/") {
      ev.preventDefault();
      focusFirst("#desk-kb-q");
    } else if (ev.key === "j") {
      ev.preventDefault();
      move(1);
    } else if (ev.key === "k") {
      ev.preventDefault();
      move(-1);
    } else if (ev.key === "?") {
      ev.preventDefault();
      toggleHelp();
    }
  });

  var selected = desk.getAttribute("data-selected");
  if (selected) markSelected(selected);
})();
