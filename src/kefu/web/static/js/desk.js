// The agent desktop: screen pop on "desk.pop" events, the contact list, the knowledge panel's "insert",
// the routing status and ringing offers, and keyboard shortcuts. kefu.js owns the /ws socket and
// re-dispatches its events as "kefu:<type>" DOM events; this file only listens. Everything shown from event data goes in through textContent.
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


  // --- routing: my status and the contacts ringing for me ------------------------------------------
  // PUT /api/v1/routing/presence/me changes the status; "routing.presence" events (a contact accepted,
  // after-contact work ended, a break forced by missed offers) keep it current. "routing.offer" shows
  // an offer with its countdown; accepting it makes the server send "desk.pop", which the handler
  // above shows; "routing.offer_gone" (rang out, withdrawn) takes it away.
  var presenceBox = document.getElementById("desk-presence");
  var offersBox = document.getElementById("desk-offers");
  var myId = presenceBox ? presenceBox.getAttribute("data-user-id") : "";
  var presenceClock = document.getElementById("desk-presence-clock");
  var clockBase = presenceClock ? parseInt(presenceClock.getAttribute("data-seconds"), 10) : NaN;
  var clockFrom = performance.now();
  // Ringing offers: interaction id -> the moment (this browser's monotonic clock) it rings out, counted
  // from the seconds the server gave, so a skewed client clock does not shorten or stretch it.
  var offers = {};

  function json(attr, el) {
    try { return JSON.parse((el && el.getAttribute(attr)) || "{}"); } catch (e) { return {}; }
  }
  var presenceLabels = json("data-labels", presenceBox);
  var reasonLabels = json("data-reasons", presenceBox);
  var channelLabels = json("data-channels", offersBox);

  function duration(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(s % 60).padStart(2, "0");
  }

  function showPresence(presence, reason, seconds) {
    if (!presenceBox) return;
    presenceBox.setAttribute("data-presence", presence);
    var state = document.getElementById("desk-presence-state");
    state.textContent = "";
    var badge = document.createElement("span");
    badge.className = "rp rp-" + presence;
    badge.setAttribute("data-presence", presence);
    badge.textContent = presenceLabels[presence] || presence;
    state.appendChild(badge);
    if (reason) {
      var why = document.createElement("span");
      why.className = "rp-reason";
      why.textContent = " " + (reasonLabels[reason] || reason);
      state.appendChild(why);
    }
    clockBase = typeof seconds === "number" ? seconds : 0;
    clockFrom = performance.now();
    var acw = document.getElementById("desk-end-acw");
    if (acw) acw.hidden = presence !== "after_contact";
    presenceBox.querySelectorAll("button[data-set-presence]").forEach(function (button) {
      var on = button.id !== "desk-end-acw" && button.getAttribute("data-set-presence") === presence;
      button.setAttribute("aria-pressed", on ? "true" : "false");
    });
    tickClocks();
  }

  function api(method, url, body) {
    var options = {
      method: method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
    };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      return response
        .json()
        .catch(function () { return {}; })
        .then(function (data) {
          if (response.ok) return data;
          var error = new Error((data && data.error && data.error.message) || String(response.status));
          error.status = response.status;
          throw error;
        });
    });
  }

  function setPresence(presence) {
    var body = { presence: presence };
    if (presence === "break") body.reason = document.getElementById("desk-break-reason").value;
    return api("PUT", "/api/v1/routing/presence/me", body)
      .then(function (state) { showPresence(state.presence, state.reason, state.seconds_in_state); })
      .catch(function (err) { toast((presenceBox.dataset.msgFailed || "") + " " + err.message); });
  }

  if (presenceBox) {
    presenceBox.addEventListener("click", function (ev) {
      var button = ev.target.closest("button[data-set-presence]");
      if (button) setPresence(button.getAttribute("data-set-presence"));
    });
    // NaN: never signed in to routing, no time in state to show yet.
    showPresence(presenceBox.getAttribute("data-presence"), presenceBox.getAttribute("data-reason") || null, clockBase);
  }

  document.addEventListener("kefu:routing.presence", function (ev) {
    var data = (ev.detail && ev.detail.data) || {};
    if (String(data.user_id) !== myId) return; // supervisors on the desk also hear everyone's changes
    showPresence(data.presence, data.reason, 0);
  });

  // Offers: one card each, newest last (``offers`` is declared above with the other state).

  function offerCard(id) {
    return offersBox ? offersBox.querySelector('[data-offer-id="' + id + '"]') : null;
  }

  function dropOffer(id) {
    var card = offerCard(id);
    if (card) card.remove();
    delete offers[id];
  }

  function addOffer(data, secondsLeft) {
    if (!offersBox || !data.interaction_id) return;
    var id = String(data.interaction_id);
    if (offers[id]) return;
    offers[id] = performance.now() + Math.max(0, secondsLeft) * 1000;
    var d = offersBox.dataset;
    var card = document.createElement("div");
    card.className = "card desk-offer";
    card.setAttribute("role", "alert");
    card.setAttribute("data-offer-id", id);
    var title = document.createElement("strong");
    title.className = "desk-offer-title";
    title.textContent = d.msgTitle || "Incoming contact";
    var what = document.createElement("span");
    what.className = "desk-offer-what";
    var channel = channelLabels[data.channel] || data.channel || "";
    what.textContent = [channel, (d.msgQueue || "Queue") + ": " + (data.queue_code || data.queue || "")].join(" · ");
    var left = document.createElement("span");
    left.className = "desk-offer-left rl-clock";
    var accept = document.createElement("button");
    accept.type = "button";
    accept.className = "primary desk-offer-accept";
    accept.textContent = d.msgAccept || "Accept";
    accept.setAttribute("aria-keyshortcuts", "Alt+A");
    var reject = document.createElement("button");
    reject.type = "button";
    reject.className = "desk-offer-reject";
    reject.textContent = d.msgReject || "Reject";
    reject.setAttribute("aria-keyshortcuts", "Alt+X");
    card.appendChild(title);
    card.appendChild(what);
    card.appendChild(left);
    card.appendChild(accept);
    card.appendChild(reject);
    offersBox.appendChild(card);
    tickClocks();
  }

  function decide(id, verb) {
    var card = offerCard(id);
    if (!card) return;
    card.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    api("POST", "/api/v1/routing/offers/" + encodeURIComponent(id) + "/" + verb)
      .then(function () { dropOffer(id); })
      .catch(function (err) {
        dropOffer(id);
        toast((offersBox.dataset.msgFailed || "") + (err.status === 409 ? "" : " " + err.message));
      });
  }

  if (offersBox) {
    offersBox.addEventListener("click", function (ev) {
      var card = ev.target.closest("[data-offer-id]");
      if (!card) return;
      if (ev.target.closest(".desk-offer-accept")) decide(card.getAttribute("data-offer-id"), "accept");
      else if (ev.target.closest(".desk-offer-reject")) decide(card.getAttribute("data-offer-id"), "reject");
    });
    // Offers already ringing when the desk (re)loads.
    api("GET", "/api/v1/routing/offers/mine")
      .then(function (list) {
        (list || []).forEach(function (offer) { addOffer(offer, offer.seconds_left); });
      })
      .catch(function () { /* the next offer event still shows */ });
  }

  document.addEventListener("kefu:routing.offer", function (ev) {
    var data = (ev.detail && ev.detail.data) || {};
    addOffer(data, data.timeout_seconds || 0);
  });

  document.addEventListener("kefu:routing.offer_gone", function (ev) {
    var data = (ev.detail && ev.detail.data) || {};
    if (data.interaction_id && offerCard(String(data.interaction_id))) {
      dropOffer(String(data.interaction_id));
      if (data.outcome !== "accepted") toast(offersBox.dataset.msgGone || "Offer ended");
    }
  });

  function firstOffer() {
    return offersBox ? offersBox.querySelector("[data-offer-id]") : null;
  }

  function tickClocks() {
    if (presenceClock && !isNaN(clockBase)) {
      presenceClock.textContent = duration(clockBase + (performance.now() - clockFrom) / 1000);
    }
    var now = performance.now();
    Object.keys(offers).forEach(function (id) {
      var card = offerCard(id);
      if (!card) return;
      var left = Math.ceil((offers[id] - now) / 1000);
      var label = card.querySelector(".desk-offer-left");
      if (left > 0) {
        label.textContent = left + " " + (offersBox.dataset.msgLeft || "s");
      } else {
        // Rang out here; the server's sweep takes the offer back and says so with offer_gone.
        dropOffer(id);
        toast(offersBox.dataset.msgGone || "Offer ended");
      }
    });
  }
  setInterval(tickClocks, 1000);

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
      } else if (ev.code === "KeyA" || ev.code === "KeyX") {
        // Works while typing a reply too: a ringing contact should not wait for a click.
        var ringing = firstOffer();
        if (ringing) {
          ev.preventDefault();
          decide(ringing.getAttribute("data-offer-id"), ev.code === "KeyA" ? "accept" : "reject");
        }
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
    } else if (ev.key === "s" && presenceBox) {
      ev.preventDefault();
      focusFirst("#desk-presence button:not([hidden])");
    } else if (ev.key === "?") {
      ev.preventDefault();
      toggleHelp();
    }
  });

  var selected = desk.getAttribute("data-selected");
  if (selected) markSelected(selected);
})();
