// Reelflow web page: the chat, live progress and history. Plain JavaScript, no build step.
//
// The API key lives in localStorage and only ever travels in the Authorization header. Live
// updates come from the conversation's Server-Sent Events stream, opened with a short-lived
// stream token (EventSource cannot send headers; the key never goes into a URL).
"use strict";

(() => {
  const KEY_STORAGE = "reelflow.apiKey";
  const LIFECYCLE = [
    "generation.requested",
    "generation.clarification_requested",
    "generation.awaiting_confirmation",
    "generation.confirmed",
    "generation.processing",
    "generation.progress",
    "generation.completed",
    "generation.failed",
    "generation.cancelled",
  ];
  const STAGES = {
    queued: "Waiting for a renderer",
    submitted: "Submitted",
    generating: "Generating",
    downloading: "Downloading",
    uploading: "Saving your video",
  };
  const STATUS_LABELS = {
    pending_clarification: "Needs answers",
    pending_confirmation: "Awaiting go-ahead",
    confirmed: "In queue",
    processing: "Rendering",
    completed: "Ready",
    failed: "Failed",
    cancelled: "Cancelled",
  };
  const MAX_CHARS = 2000;

  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    conversations: [],
    current: null, // the open conversation's id
    messages: new Map(), // id -> message
    gens: new Map(), // id -> generation
    nodes: new Map(), // render key -> { node, sig }
    source: null,
    streamFor: null,
    retryTimer: null,
    historyCursor: null,
    notified: new Set(),
    sending: false,
    stick: true, // the chat is scrolled to its end (and should stay there as it grows)
  };
  // What the page has shown, for whoever inspects it (the browser test reads it).
  window.reelflowDebug = { progress: [] };

  // --- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, problem) {
      super(message);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Authorization: `Bearer ${state.key}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, "Can't reach Reelflow right now. Check your connection and try again.");
    }
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json().catch(() => null) : null;
    if (!response.ok) throw new ApiError(response.status, explain(response.status, data), data);
    return data;
  }

  // A problem document (RFC 9457) in words a person reads.
  function explain(status, problem) {
    if (status === 401) return "Your API key wasn't accepted. Please sign in again.";
    if (status === 413) return `That message is too long to send (${MAX_CHARS.toLocaleString()} characters at most).`;
    if (status === 404) return (problem && problem.detail ? capital(problem.detail) : "Not found") + ".";
    if (status === 429) return "Too many requests just now. Please wait a moment and try again.";
    if (status >= 500) return "Something went wrong on our side. Please try again in a moment.";
    if (!problem) return `The server answered ${status}.`;
    const errors = problem.errors || [];
    const content = errors.find((e) => e.field === "content");
    if (content) {
      if (/at least 1|blank/.test(content.message)) return "Please type a message first.";
      if (/at most/.test(content.message)) return `That message is too long (${MAX_CHARS.toLocaleString()} characters at most).`;
      return `Your message can't be sent: ${content.message}.`;
    }
    let text = capital(problem.detail || problem.title || "The request was refused");
    if (errors.length) {
      text += ": " + errors.map((e) => (e.field ? `${e.field.replace(/^answers\./, "")} ` : "") + e.message).join("; ");
    }
    return text.endsWith(".") ? text : text + ".";
  }

  const capital = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);

  // --- small helpers ----------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function when(iso) {
    const date = new Date(iso);
    const seconds = (Date.now() - date.getTime()) / 1000;
    if (seconds < 45) return "just now";
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400 && date.getDate() === new Date().getDate()) {
      return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    return date.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  function money(value) {
    if (value === null || value === undefined) return "—";
    return value.toLocaleString(undefined, { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 4 });
  }

  function banner(message) {
    $("banner-text").textContent = message;
    $("banner").hidden = !message;
  }

  function composerError(message) {
    $("composer-error").textContent = message || "";
    $("composer-error").hidden = !message;
  }

  // --- signing in -------------------------------------------------------------------------

  async function signIn(key) {
    state.key = key;
    await api("/v1/conversations?limit=1");
    localStorage.setItem(KEY_STORAGE, key);
    await showApp();
  }

  function signOut() {
    localStorage.removeItem(KEY_STORAGE);
    closeStream();
    state.key = null;
    state.current = null;
    $("app").hidden = true;
    $("signin").hidden = false;
    $("api-key").value = "";
    $("api-key").focus();
  }

  async function showApp() {
    $("signin").hidden = true;
    $("app").hidden = false;
    updateNotifyButton();
    await loadConversations();
    const linked = state.conversations.find((c) => `#${c.id}` === location.hash);
    if (linked || state.conversations.length) await openConversation((linked || state.conversations[0]).id);
    else newChat();
  }

  // --- conversations ----------------------------------------------------------------------

  async function loadConversations() {
    const page = await api("/v1/conversations?limit=50");
    state.conversations = page.items;
    renderConversations();
  }

  function renderConversations() {
    const list = $("conversation-list");
    list.replaceChildren(
      ...state.conversations.map((c) =>
        el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: c.id === state.current ? "active" : "",
              title: c.title || "New chat",
              onclick: () => { openConversation(c.id); closeDrawer(); showView("chat"); },
            },
            c.title || "New chat",
            el("span", { class: "when", text: when(c.created_at) }),
          ),
        ),
      ),
    );
    $("conversation-empty").hidden = state.conversations.length > 0;
  }

  function newChat() {
    closeStream();
    state.current = null;
    history.replaceState(null, "", location.pathname);
    state.messages.clear();
    state.gens.clear();
    $("chat-title").textContent = "New chat";
    renderConversations();
    renderChat();
    $("composer-input").focus();
  }

  async function openConversation(id) {
    if (state.current !== id) {
      state.messages.clear();
      state.gens.clear();
    }
    state.current = id;
    history.replaceState(null, "", `#${id}`); // a reload reopens this conversation
    const convo = state.conversations.find((c) => c.id === id);
    $("chat-title").textContent = (convo && convo.title) || "New chat";
    renderConversations();
    renderChat();
    try {
      await refresh();
    } catch (error) {
      banner(error.message);
    }
    openStream();
  }

  // Everything about the open conversation, from the API (on open, and whenever the live
  // stream (re)connects, so nothing missed while it was away stays missing).
  async function refresh() {
    const id = state.current;
    if (!id) return;
    const [messages, gens] = await Promise.all([
      api(`/v1/conversations/${id}/messages`),
      api(`/v1/generations?conversation_id=${id}&limit=100`),
    ]);
    if (state.current !== id) return;
    for (const m of messages.items) state.messages.set(m.id, m);
    for (const g of gens.items) upsertGeneration(g, { quiet: true });
    renderChat();
  }

  // --- live updates -----------------------------------------------------------------------

  function closeStream() {
    clearTimeout(state.retryTimer);
    if (state.source) state.source.close();
    state.source = null;
    state.streamFor = null;
    $("live-indicator").hidden = true;
  }

  async function openStream() {
    const id = state.current;
    if (!id || state.streamFor === id) return;
    closeStream();
    state.streamFor = id;
    let token;
    try {
      token = (await api("/v1/stream-tokens", { method: "POST" })).token;
    } catch (error) {
      state.streamFor = null;
      if (error.status !== 401) state.retryTimer = setTimeout(openStream, 5000);
      return;
    }
    if (state.current !== id) return;
    const source = new EventSource(`/v1/conversations/${id}/events?token=${encodeURIComponent(token)}`);
    state.source = source;
    source.onopen = () => {
      $("live-indicator").hidden = false;
      banner("");
      refresh().catch(() => {});
    };
    source.onerror = () => {
      $("live-indicator").hidden = true;
      if (source.readyState === EventSource.CLOSED && state.source === source) {
        // Refused (an expired token, say): start over with a fresh token shortly.
        state.streamFor = null;
        state.retryTimer = setTimeout(openStream, 3000);
      }
    };
    source.addEventListener("message", (e) => {
      const message = JSON.parse(e.data);
      if (message.conversation_id !== state.current) return;
      state.messages.set(message.id, message);
      renderChat();
    });
    for (const name of LIFECYCLE) {
      source.addEventListener(name, (e) => {
        upsertGeneration(JSON.parse(e.data));
        renderChat();
      });
    }
  }

  function upsertGeneration(gen, { quiet = false } = {}) {
    const known = state.gens.get(gen.id);
    if (known && known.updated_at > gen.updated_at) return; // an older state arriving late
    state.gens.set(gen.id, gen);
    if (gen.status === "confirmed" || gen.status === "processing") {
      window.reelflowDebug.progress.push({ status: gen.status, stage: gen.progress && gen.progress.stage, percent: gen.progress && gen.progress.percent });
    }
    if (!quiet && gen.status === "completed" && known && known.status !== "completed") notifyDone(gen);
  }

  // --- notifications ----------------------------------------------------------------------

  function updateNotifyButton() {
    const button = $("notify-button");
    if (!("Notification" in window)) { button.hidden = true; return; }
    const on = Notification.permission === "granted";
    button.classList.toggle("active", on);
    button.title = on ? "You'll be notified when a video is ready" : "Notify me when a video is ready";
    button.querySelector("span").textContent = on ? "Notifications on" : "Notify me";
  }

  async function askNotifications() {
    if (!("Notification" in window)) return;
    if (Notification.permission === "denied") {
      banner("Notifications are blocked for this site. Allow them in your browser's site settings.");
      return;
    }
    await Notification.requestPermission();
    updateNotifyButton();
  }

  function notifyDone(gen) {
    if (state.notified.has(gen.id)) return;
    state.notified.add(gen.id);
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    const note = new Notification("Your video is ready", {
      body: gen.prompt.length > 120 ? gen.prompt.slice(0, 119) + "…" : gen.prompt,
      icon: gen.result ? gen.result.thumbnail_url : "/web/logo.svg",
      tag: gen.id,
    });
    note.onclick = () => {
      window.focus();
      if (gen.conversation_id) openConversation(gen.conversation_id);
      note.close();
    };
  }

  // --- the chat ---------------------------------------------------------------------------

  function sortedMessages() {
    return [...state.messages.values()].sort((a, b) =>
      a.created_at === b.created_at ? (a.id < b.id ? -1 : 1) : a.created_at < b.created_at ? -1 : 1,
    );
  }

  // Keyed rendering: a node is rebuilt only when what it shows changed, so a playing video
  // keeps playing while progress and new messages arrive around it.
  function renderChat() {
    const container = $("messages");
    const messages = sortedMessages();
    $("welcome").hidden = messages.length > 0 || !!state.current && state.gens.size > 0;
    const anchors = new Map(); // generation id -> the last message about it
    for (const m of messages) if (m.generation_id) anchors.set(m.generation_id, m.id);
    const withVideo = new Set(messages.filter((m) => m.attachments.length).map((m) => m.generation_id));
    const order = ["welcome"];
    const wanted = new Map([["welcome", { node: $("welcome"), sig: "" }]]);
    const put = (key, sig, build) => {
      let entry = state.nodes.get(key);
      if (!entry || entry.sig !== sig) {
        const node = build();
        if (entry) entry.node.replaceWith(node);
        entry = { node, sig };
        state.nodes.set(key, entry);
      }
      wanted.set(key, entry);
      order.push(key);
    };
    for (const m of messages) {
      put(`m:${m.id}`, messageSig(m), () => messageNode(m));
      for (const [genId, anchor] of anchors) {
        if (anchor !== m.id) continue;
        const gen = state.gens.get(genId);
        if (gen) put(`g:${genId}`, genSig(gen, withVideo.has(genId)), () => genCard(gen, withVideo.has(genId)));
      }
    }
    for (const gen of state.gens.values()) {
      if (!anchors.has(gen.id) && gen.conversation_id === state.current) {
        put(`g:${gen.id}`, genSig(gen, false), () => genCard(gen, false));
      }
    }
    for (const [key, entry] of state.nodes) {
      if (!wanted.has(key)) {
        entry.node.remove();
        state.nodes.delete(key);
      }
    }
    order.forEach((key, index) => {
      const node = wanted.get(key).node;
      if (container.children[index] !== node) container.insertBefore(node, container.children[index] || null);
    });
    keepAtEnd();
  }

  function keepAtEnd() {
    const container = $("messages");
    if (state.stick) container.scrollTop = container.scrollHeight;
  }

  const messageSig = (m) => JSON.stringify([m.content, m.attachments.map((a) => a.url.split("?")[0]), !!m.pending]);

  function messageNode(m) {
    const wrap = el("div", { class: `msg ${m.role}${m.pending ? " pending" : ""}`, "data-id": m.id });
    wrap.append(el("div", { class: "bubble", text: m.content }));
    for (const a of m.attachments) {
      if (a.type === "video") wrap.append(videoCard(a.url, a.thumbnail_url));
    }
    wrap.append(el("span", { class: "time", text: m.pending ? "sending…" : when(m.created_at) }));
    return wrap;
  }

  function videoCard(url, poster) {
    return el(
      "div",
      { class: "card video-card" },
      // Its size is known once its metadata is: keep the chat's end in view as it grows.
      el("video", { src: url, poster: poster || undefined, controls: true, playsinline: true, preload: "metadata", onloadedmetadata: keepAtEnd }),
    );
  }

  const genSig = (g, hasVideo) =>
    JSON.stringify([g.status, g.questions, g.answers, g.spec, g.estimated_cost_usd, g.progress, g.error, hasVideo, g.result && g.result.video_url.split("?")[0]]);

  function genCard(gen, hasVideo) {
    const holder = el("div", { class: "msg assistant", "data-generation": gen.id, "data-status": gen.status });
    const card = cardFor(gen, hasVideo);
    if (card) holder.append(card);
    holder.hidden = !card;
    return holder;
  }

  function cardFor(gen, hasVideo) {
    switch (gen.status) {
      case "pending_clarification":
        return gen.questions.length ? questionsCard(gen) : statusCard("Reading your request…", null);
      case "pending_confirmation":
        return confirmCard(gen);
      case "confirmed":
        return progressCard(gen, STAGES.queued, null);
      case "processing":
        return progressCard(gen, STAGES[gen.progress && gen.progress.stage] || "Rendering", gen.progress && gen.progress.percent);
      case "completed":
        return hasVideo || !gen.result ? null : videoCard(gen.result.video_url, gen.result.thumbnail_url);
      default:
        return null; // failed, cancelled: the assistant's message says what happened
    }
  }

  function statusCard(text) {
    return el("div", { class: "card" }, el("p", { class: "status-note", text }), el("div", { class: "bar indeterminate" }, el("span")));
  }

  function questionsCard(gen) {
    const card = el("div", { class: "card questions-card" });
    for (const q of gen.questions) {
      const block = el("div", { class: "question" }, el("p", { text: q.text }));
      if (q.choices && q.choices.length) {
        block.append(
          el(
            "div",
            { class: "choices" },
            q.choices.map((c) =>
              el("button", {
                type: "button",
                class: "chip choice",
                "data-question": q.id,
                "data-value": c.value,
                text: c.label,
                onclick: (e) => {
                  e.currentTarget.classList.add("chosen");
                  for (const b of e.currentTarget.parentElement.children) b.disabled = true;
                  send(c.label);
                },
              }),
            ),
          ),
        );
      } else {
        block.append(el("p", { class: "status-note", text: "Type your answer in the box below." }));
      }
      card.append(block);
    }
    return card;
  }

  function confirmCard(gen) {
    const spec = gen.spec || {};
    const params = gen.params || {};
    const aspect = spec.aspect_ratio || params.aspect_ratio;
    const rows = [
      ["Format", aspect ? `${aspect} · ${aspect === "9:16" ? "vertical" : "landscape"}` : "—"],
      ["Length", spec.duration_seconds ? `${spec.duration_seconds} seconds` : "—"],
      ["Resolution", spec.resolution || params.resolution || "—"],
      ["Sound", spec.generate_audio ? "With sound" : "No sound"],
      ["Model", spec.model || params.model || "—"],
    ];
    const cost = gen.estimated_cost_usd;
    const buttons = [];
    const act = (text) => () => { for (const b of buttons) b.disabled = true; send(text); };
    buttons.push(el("button", { type: "button", class: "danger cancel-button", text: "Cancel", onclick: act("No, cancel it") }));
    buttons.push(el("button", { type: "button", class: "primary confirm-button", text: "Confirm", onclick: act("Yes, go ahead") }));
    return el(
      "div",
      { class: "card confirm-card" },
      el("h4", { text: "Ready when you are" }),
      el("dl", { class: "params" }, rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
      el("div", { class: "cost" }, money(cost), " ", el("small", { text: cost === 0 ? "estimated · rendered locally, free" : "estimated cost" })),
      el("div", { class: "actions" }, buttons),
    );
  }

  function progressCard(gen, stage, percent) {
    const known = typeof percent === "number";
    const queue = gen.progress && gen.progress.queue_position;
    const right = known ? `${Math.round(percent)}%` : queue ? `#${queue} in queue` : "";
    const bar = el("div", { class: `bar${known ? "" : " indeterminate"}`, role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": known ? String(Math.round(percent)) : undefined }, el("span"));
    if (known) bar.firstChild.style.width = `${Math.max(3, Math.min(100, percent))}%`;
    return el(
      "div",
      { class: "card progress-card" },
      el("div", { class: "progress-head" }, el("span", { class: "stage", text: stage }), el("span", { class: "muted", text: right })),
      bar,
    );
  }

  async function send(text) {
    const content = text.trim();
    composerError("");
    if (!content) return composerError("Please type a message first.");
    if (content.length > MAX_CHARS) return composerError(`That message is too long (${MAX_CHARS.toLocaleString()} characters at most).`);
    if (state.sending) return;
    state.sending = true;
    $("send-button").disabled = true;
    const temp = { id: `pending-${Date.now()}`, role: "user", content, attachments: [], created_at: new Date().toISOString(), pending: true, generation_id: null };
    try {
      if (!state.current) {
        const created = await api("/v1/conversations", { method: "POST", body: {} });
        state.conversations.unshift(created);
        state.current = created.id;
        renderConversations();
      }
      state.messages.set(temp.id, temp);
      renderChat();
      const id = state.current;
      const posted = await api(`/v1/conversations/${id}/messages`, { method: "POST", body: { content } });
      state.messages.delete(temp.id);
      if (state.current === id) {
        state.messages.set(posted.message.id, posted.message);
        if (posted.reply) state.messages.set(posted.reply.id, posted.reply);
        if (posted.generation) upsertGeneration(posted.generation);
        renderChat();
        openStream();
        const convo = state.conversations.find((c) => c.id === id);
        if (convo && !convo.title) loadConversations().then(() => {
          const fresh = state.conversations.find((c) => c.id === id);
          if (fresh && state.current === id) $("chat-title").textContent = fresh.title || "New chat";
        }).catch(() => {});
      }
    } catch (error) {
      state.messages.delete(temp.id);
      renderChat();
      composerError(error.message);
      if (!$("composer-input").value) $("composer-input").value = content;
      if (error.status === 401) signOut();
    } finally {
      state.sending = false;
      $("send-button").disabled = false;
    }
  }

  // --- history ----------------------------------------------------------------------------

  async function loadHistory({ more = false } = {}) {
    const params = new URLSearchParams({ limit: "20" });
    const status = $("status-filter").value;
    if (status) params.set("status", status);
    if (more && state.historyCursor) params.set("cursor", state.historyCursor);
    try {
      const page = await api(`/v1/generations?${params}`);
      state.historyCursor = page.next_cursor;
      const items = page.items.map(historyItem);
      if (more) $("history-list").append(...items);
      else $("history-list").replaceChildren(...items);
      $("history-empty").hidden = $("history-list").children.length > 0;
      $("history-more").hidden = !page.next_cursor;
    } catch (error) {
      banner(error.message);
    }
  }

  function historyItem(gen) {
    const thumb = gen.result
      ? el("img", { class: "thumb", src: gen.result.thumbnail_url, alt: "" })
      : el("div", { class: `thumb placeholder ${gen.status}` });
    const meta = [el("span", { class: `badge ${gen.status}`, text: STATUS_LABELS[gen.status] || gen.status })];
    const progress = gen.progress || {};
    if (gen.status === "confirmed" && progress.queue_position) meta.push(el("span", { class: "queue", text: `#${progress.queue_position} in queue` }));
    if (gen.status === "processing") meta.push(el("span", { text: `${STAGES[progress.stage] || "Rendering"}${typeof progress.percent === "number" ? ` · ${Math.round(progress.percent)}%` : ""}` }));
    if (gen.result) meta.push(el("span", { text: `${Math.round(gen.result.duration_seconds)} s · ${gen.result.resolution}` }));
    if (gen.error) meta.push(el("span", { text: gen.error.message }));
    meta.push(el("span", { text: when(gen.created_at) }));
    return el(
      "li",
      {
        class: "history-item",
        tabindex: "0",
        "data-status": gen.status,
        onclick: () => {
          if (gen.conversation_id) { showView("chat"); openConversation(gen.conversation_id); }
          else if (gen.result) window.open(gen.result.video_url, "_blank", "noopener");
        },
      },
      thumb,
      el("div", {}, el("div", { class: "prompt", text: gen.prompt }), el("div", { class: "meta" }, meta)),
    );
  }

  // --- views and wiring -------------------------------------------------------------------

  function showView(name) {
    const wasHidden = $("chat-view").hidden;
    $("chat-view").hidden = name !== "chat";
    if (name === "chat" && wasHidden) {
      state.stick = true;
      keepAtEnd();
    }
    $("history-view").hidden = name !== "history";
    $("tab-chat").classList.toggle("active", name === "chat");
    $("tab-history").classList.toggle("active", name === "history");
    if (name === "history") loadHistory();
  }

  function closeDrawer() {
    $("sidebar").classList.remove("open");
    $("scrim").hidden = true;
  }

  function wire() {
    $("signin-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const key = $("api-key").value.trim();
      const error = $("signin-error");
      error.hidden = true;
      if (!key) {
        error.textContent = "Please paste your API key.";
        error.hidden = false;
        return;
      }
      $("signin-button").disabled = true;
      try {
        await signIn(key);
      } catch (err) {
        state.key = null;
        error.textContent = err.status === 401 ? "That key wasn't accepted. Check it and try again." : err.message;
        error.hidden = false;
      } finally {
        $("signin-button").disabled = false;
      }
    });
    $("signout-button").addEventListener("click", signOut);
    $("notify-button").addEventListener("click", askNotifications);
    $("banner-close").addEventListener("click", () => banner(""));
    $("new-chat").addEventListener("click", () => { newChat(); closeDrawer(); showView("chat"); });
    $("tab-chat").addEventListener("click", () => showView("chat"));
    $("tab-history").addEventListener("click", () => showView("history"));
    $("status-filter").addEventListener("change", () => loadHistory());
    $("history-refresh").addEventListener("click", () => loadHistory());
    $("history-more").addEventListener("click", () => loadHistory({ more: true }));
    $("menu-button").addEventListener("click", () => {
      $("sidebar").classList.toggle("open");
      $("scrim").hidden = !$("sidebar").classList.contains("open");
    });
    $("scrim").addEventListener("click", closeDrawer);
    for (const chip of document.querySelectorAll(".suggestion")) {
      chip.addEventListener("click", () => send(chip.textContent));
    }
    $("messages").addEventListener("scroll", () => {
      const box = $("messages");
      state.stick = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
    });
    const input = $("composer-input");
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = input.value;
      if (text.trim()) input.value = "";
      send(text);
      input.style.height = "";
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    input.addEventListener("input", () => {
      input.style.height = "";
      input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.current && !state.source) openStream();
    });
  }

  async function start() {
    wire();
    const saved = localStorage.getItem(KEY_STORAGE);
    if (!saved) {
      $("signin").hidden = false;
      return;
    }
    try {
      await signIn(saved);
    } catch (error) {
      $("signin").hidden = false;
      if (error.status === 401) localStorage.removeItem(KEY_STORAGE);
      $("signin-error").textContent = error.status === 401 ? "Your saved key is no longer valid. Please sign in again." : error.message;
      $("signin-error").hidden = false;
    }
  }

  start();
})();
