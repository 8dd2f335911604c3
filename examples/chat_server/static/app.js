// The chat page: plain JS, no build step. Talks to the server over HTTP (JSON) and one
// WebSocket (see docs/protocol.md). All user text goes through textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  token: sessionStorage.getItem("token"),
  me: JSON.parse(sessionStorage.getItem("me") || "null"),
  ws: null,
  wsUp: false,
  backoff: 500,
  inbox: new Map(), // conversation id -> inbox entry
  open: null, // {id, kind, title, members: Map(id -> member)}
  msgs: new Map(), // id -> message, for the open conversation
  oldest: null,
  noMore: false,
  loadingOlder: false,
  pending: new Map(), // client_key -> {conversation, text, attachment, el}
  typingTimers: new Map(),
  lastTypingSent: 0,
  blobs: new Map(), // asset url -> object URL
};

// ---------- HTTP ----------
async function api(method, path, body, raw) {
  const headers = {};
  if (S.token) headers["Authorization"] = "Bearer " + S.token;
  let payload;
  if (raw) {
    headers["Content-Type"] = raw.type;
    payload = raw.data;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const r = await fetch(path, { method, headers, body: payload });
  if (r.status === 401 && S.token && !path.startsWith("/api/sign")) {
    signedOut();
    throw new Error("signed out");
  }
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.message || r.statusText);
  return data;
}

// ---------- auth ----------
async function auth(kind) {
  $("auth-error").textContent = "";
  try {
    const res = await api("POST", "/api/" + kind, {
      username: $("username").value.trim(),
      password: $("password").value,
    });
    S.token = res.token;
    S.me = res.user;
    sessionStorage.setItem("token", S.token);
    sessionStorage.setItem("me", JSON.stringify(S.me));
    start();
  } catch (e) {
    $("auth-error").textContent = e.message;
  }
}
$("auth-form").addEventListener("submit", (e) => { e.preventDefault(); auth("signin"); });
$("signup").addEventListener("click", () => auth("signup"));
$("signout").addEventListener("click", async () => {
  try { await api("POST", "/api/signout"); } catch (_) { /* gone anyway */ }
  signedOut();
});

function signedOut() {
  S.token = null;
  S.me = null;
  sessionStorage.clear();
  if (S.ws) { S.ws.onclose = null; S.ws.close(); S.ws = null; }
  $("app").classList.add("hidden");
  $("auth").classList.remove("hidden");
}

function start() {
  $("auth").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("me-name").textContent = S.me.username;
  loadInbox();
  connect();
}

// ---------- WebSocket ----------
function connect() {
  if (!S.token) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(S.token)}`);
  S.ws = ws;
  ws.onopen = () => {
    S.wsUp = true;
    S.backoff = 500;
    $("conn-state").classList.add("up");
    for (const [key, p] of S.pending) sendFrame(key, p); // retries keep their client key
  };
  ws.onmessage = (ev) => {
    let f;
    try { f = JSON.parse(ev.data); } catch (_) { return; }
    handle(f);
  };
  ws.onclose = async (ev) => {
    S.wsUp = false;
    $("conn-state").classList.remove("up");
    if (ev.code === 4001 || !S.token) return; // signed out
    setTimeout(async () => {
      // A restarted server forgets sessions: check ours before reconnecting.
      try { await api("GET", "/api/me"); } catch (_) { return; }
      connect();
    }, S.backoff);
    S.backoff = Math.min(S.backoff * 2, 10000);
  };
}

function wsSend(frame) {
  if (S.ws && S.wsUp) S.ws.send(JSON.stringify(frame));
}

function handle(f) {
  switch (f.type) {
    case "unread":
      for (const c of f.conversations) {
        if (c.messages.length) ackDelivered(c.conversation, c.messages[c.messages.length - 1].id);
      }
      loadInbox();
      if (S.open) reloadOpen();
      break;
    case "message":
      onMessage(f.message);
      break;
    case "ack": {
      const p = S.pending.get(f.client_key);
      S.pending.delete(f.client_key);
      if (p && p.el) p.el.remove();
      onMessage(f.message);
      break;
    }
    case "receipt":
      if (S.open && S.open.id === f.conversation) {
        const m = S.open.members.get(f.user);
        if (m) { m.delivered = f.delivered; m.read = f.read; }
        renderTicks();
      }
      if (f.user === S.me.id) loadInbox(); // read on another device
      break;
    case "presence":
      for (const e of S.inbox.values()) {
        if (e.peer && e.peer.id === f.user) { e.peer.online = f.online; e.peer.last_seen_ms = f.last_seen_ms; }
      }
      if (S.open && S.open.members.has(f.user)) {
        const m = S.open.members.get(f.user);
        m.online = f.online;
        m.last_seen_ms = f.last_seen_ms;
      }
      renderInbox();
      renderStatus();
      break;
    case "typing":
      if (S.open && S.open.id === f.conversation) showTyping(f.username);
      break;
    case "removed":
      if (S.open && S.open.id === f.conversation) openConversation(f.conversation);
      loadInbox();
      break;
    case "error":
      if (f.client_key && S.pending.has(f.client_key)) {
        const p = S.pending.get(f.client_key);
        if (f.code === "rate_limited") {
          setTimeout(() => sendFrame(f.client_key, p), f.retry_after_ms || 1000);
        } else {
          S.pending.delete(f.client_key);
          if (p.el) { p.el.classList.add("failed"); p.el.title = f.message; }
        }
      }
      toast(f.message);
      break;
    default:
      break;
  }
}

function ackDelivered(conversation, id) {
  wsSend({ type: "delivered", conversation, up_to: id });
}

function onMessage(m) {
  const open = S.open && S.open.id === m.conversation;
  if (m.sender !== S.me.id) {
    if (open && document.visibilityState === "visible") wsSend({ type: "read", conversation: m.conversation, up_to: m.id });
    else ackDelivered(m.conversation, m.id);
  }
  if (open && !S.msgs.has(m.id)) {
    S.msgs.set(m.id, m);
    appendMessage(m, true);
    if (S.open.members.has(m.sender)) hideTyping();
  }
  const e = S.inbox.get(m.conversation);
  if (!e) { loadInbox(); return; }
  if (!e.last_message || e.last_message.id < m.id) {
    e.last_message = m;
    e.activity_ms = m.timestamp_ms;
    if (m.sender !== S.me.id && !(open && document.visibilityState === "visible")) e.unread += 1;
  }
  renderInbox();
}

// ---------- inbox ----------
async function loadInbox() {
  try {
    const page = await api("GET", "/api/inbox?limit=100");
    S.inbox = new Map(page.entries.map((e) => [e.conversation, e]));
    renderInbox();
  } catch (e) { /* shown elsewhere */ }
}

function renderInbox() {
  const ul = $("inbox");
  ul.textContent = "";
  const entries = [...S.inbox.values()].sort((a, b) => b.activity_ms - a.activity_ms || b.conversation - a.conversation);
  for (const e of entries) {
    const li = document.createElement("li");
    li.dataset.conversation = e.conversation;
    if (S.open && S.open.id === e.conversation) li.classList.add("open");
    const av = document.createElement("div");
    av.className = "avatar" + (e.peer && e.peer.online ? " online" : "");
    av.textContent = (e.title || "?").slice(0, 1).toUpperCase();
    const body = document.createElement("div");
    body.className = "body";
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = e.title;
    const prev = document.createElement("div");
    prev.className = "preview";
    prev.textContent = e.last_message ? preview(e.last_message) : (e.kind === "group" ? `${e.members} members` : "no messages yet");
    body.append(name, prev);
    li.append(av, body);
    if (e.unread > 0) {
      const b = document.createElement("span");
      b.className = "badge";
      b.textContent = e.unread;
      li.append(b);
    }
    li.addEventListener("click", () => openConversation(e.conversation));
    ul.append(li);
  }
}

function preview(m) {
  if (m.kind === "system") return systemText(m);
  const who = m.sender === S.me.id ? "You: " : "";
  return who + (m.attachment && !m.text ? "[image]" : m.text);
}

$("new-direct").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("side-error").textContent = "";
  try {
    const c = await api("POST", "/api/direct", { username: $("direct-username").value.trim() });
    $("direct-username").value = "";
    await loadInbox();
    openConversation(c.id);
  } catch (e) { $("side-error").textContent = e.message; }
});

$("new-group").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("side-error").textContent = "";
  const members = $("group-members").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const c = await api("POST", "/api/groups", { name: $("group-name").value.trim(), members });
    $("group-name").value = "";
    $("group-members").value = "";
    await loadInbox();
    openConversation(c.id);
  } catch (e) { $("side-error").textContent = e.message; }
});

// ---------- a conversation ----------
async function openConversation(id) {
  let detail;
  try { detail = await api("GET", `/api/conversations/${id}`); } catch (e) { toast(e.message); return; }
  S.open = { id, kind: detail.kind, title: detail.title, member: detail.member, members: new Map(detail.members.map((m) => [m.id, m])) };
  S.msgs = new Map();
  S.oldest = null;
  S.noMore = false;
  $("empty").classList.add("hidden");
  $("chat").classList.remove("hidden");
  $("chat-title").textContent = detail.title;
  $("group-tools").classList.toggle("hidden", detail.kind !== "group" || !detail.member);
  $("composer").classList.toggle("hidden", !detail.member);
  $("messages").textContent = "";
  hideTyping();
  renderStatus();
  const page = await api("GET", `/api/conversations/${id}/messages?limit=30`);
  for (const m of page.messages) { S.msgs.set(m.id, m); appendMessage(m, false); }
  S.oldest = page.messages.length ? page.messages[0].id : null;
  S.noMore = page.messages.length < 30;
  renderTicks();
  scrollBottom();
  markRead();
  const e = S.inbox.get(id);
  if (e) { e.unread = 0; }
  renderInbox();
  if (!S.noMore && $("messages").scrollHeight <= $("messages").clientHeight) loadOlder();
}

async function reloadOpen() {
  if (S.open) openConversation(S.open.id);
}

function markRead() {
  if (!S.open || document.visibilityState !== "visible") return;
  let last = 0;
  for (const m of S.msgs.values()) last = Math.max(last, m.id);
  if (last) wsSend({ type: "read", conversation: S.open.id, up_to: last });
}
document.addEventListener("visibilitychange", markRead);

$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 60) loadOlder();
});

async function loadOlder() {
  if (!S.open || S.noMore || S.loadingOlder || S.oldest === null) return;
  S.loadingOlder = true;
  const box = $("messages");
  const id = S.open.id;
  try {
    const page = await api("GET", `/api/conversations/${id}/messages?before=${S.oldest}&limit=30`);
    if (!S.open || S.open.id !== id) return;
    const h = box.scrollHeight;
    const first = box.firstChild;
    for (const m of page.messages) {
      if (S.msgs.has(m.id)) continue;
      S.msgs.set(m.id, m);
      box.insertBefore(messageEl(m), first);
    }
    if (page.messages.length) S.oldest = page.messages[0].id;
    S.noMore = page.messages.length < 30;
    box.scrollTop += box.scrollHeight - h;
    renderTicks();
  } catch (e) {
    S.noMore = true;
  } finally {
    S.loadingOlder = false;
  }
}

function systemText(m) {
  let e;
  try { e = JSON.parse(m.text); } catch (_) { return m.text; }
  switch (e.event) {
    case "created": return `${e.by} created the group "${e.name}"`;
    case "added": return `${e.by} added ${e.username}`;
    case "removed": return `${e.by} removed ${e.username}`;
    case "left": return `${e.username} left`;
    default: return m.text;
  }
}

function messageEl(m) {
  const d = document.createElement("div");
  d.dataset.id = m.id;
  if (m.kind === "system") {
    d.className = "msg system";
    d.textContent = systemText(m);
    return d;
  }
  const mine = m.sender === S.me.id;
  d.className = "msg" + (mine ? " mine" : "");
  if (!mine && S.open && S.open.kind === "group") {
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = m.sender_name;
    d.append(who);
  }
  if (m.attachment) {
    const img = document.createElement("img");
    img.alt = "image";
    loadImage(m.attachment, img);
    d.append(img);
  }
  if (m.text) {
    const t = document.createElement("div");
    t.className = "text";
    t.textContent = m.text;
    d.append(t);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = m.timestamp_ms ? new Date(m.timestamp_ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  if (mine) {
    const tick = document.createElement("span");
    tick.className = "tick";
    meta.append(tick);
  }
  d.append(meta);
  return d;
}

async function loadImage(url, img) {
  try {
    if (!S.blobs.has(url)) {
      const r = await fetch(url, { headers: { Authorization: "Bearer " + S.token } });
      if (!r.ok) throw new Error(r.statusText);
      S.blobs.set(url, URL.createObjectURL(await r.blob()));
    }
    img.src = S.blobs.get(url);
  } catch (_) {
    img.alt = "image unavailable";
  }
}

function appendMessage(m, live) {
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  // Keep id order even if frames arrive out of order.
  let before = null;
  for (const el of box.children) {
    if (el.dataset.id && Number(el.dataset.id) > m.id) { before = el; break; }
  }
  const el = messageEl(m);
  const pendingFirst = box.querySelector(".pending");
  box.insertBefore(el, before || pendingFirst);
  renderTicks();
  if (live && (atBottom || m.sender === S.me.id)) scrollBottom();
}

function scrollBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function renderTicks() {
  if (!S.open) return;
  const others = [...S.open.members.values()].filter((m) => m.id !== S.me.id);
  const minDelivered = others.length ? Math.min(...others.map((m) => m.delivered)) : 0;
  const minRead = others.length ? Math.min(...others.map((m) => m.read)) : 0;
  for (const el of $("messages").querySelectorAll(".msg.mine")) {
    const tick = el.querySelector(".tick");
    if (!tick || !el.dataset.id) continue;
    const id = Number(el.dataset.id);
    if (minRead >= id) { tick.textContent = "✓✓"; tick.className = "tick read"; tick.title = "read"; }
    else if (minDelivered >= id) { tick.textContent = "✓✓"; tick.className = "tick delivered"; tick.title = "delivered"; }
    else { tick.textContent = "✓"; tick.className = "tick sent"; tick.title = "sent"; }
  }
}

function renderStatus() {
  if (!S.open) return;
  const others = [...S.open.members.values()].filter((m) => m.id !== S.me.id);
  let text;
  if (S.open.kind === "direct" && others.length === 1) {
    const o = others[0];
    text = o.online ? "online" : (o.last_seen_ms ? "last seen " + ago(o.last_seen_ms) : "offline");
  } else {
    const online = others.filter((m) => m.online).length;
    text = `${S.open.members.size} members, ${online} other${online === 1 ? "" : "s"} online`;
  }
  $("chat-status").textContent = text;
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `at ${new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
  return new Date(ms).toLocaleString();
}
setInterval(renderStatus, 30000);

function showTyping(name) {
  $("typing").textContent = `${name} is typing…`;
  clearTimeout(S.typingTimers.get("t"));
  S.typingTimers.set("t", setTimeout(hideTyping, 3000));
}
function hideTyping() { $("typing").textContent = ""; }

// ---------- sending ----------
function newKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

function sendFrame(key, p) {
  wsSend({ type: "send", conversation: p.conversation, text: p.text, attachment: p.attachment || undefined, client_key: key });
}

function queueSend(text, attachment) {
  if (!S.open) return;
  const key = newKey();
  const p = { conversation: S.open.id, text, attachment };
  const el = messageEl({ id: 0, sender: S.me.id, text, attachment, kind: "normal", timestamp_ms: 0 });
  el.classList.add("pending");
  el.removeAttribute("data-id");
  el.querySelector(".meta").textContent = "sending…";
  $("messages").append(el);
  scrollBottom();
  p.el = el;
  S.pending.set(key, p);
  sendFrame(key, p);
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  $("text").value = "";
  queueSend(text, null);
});

$("text").addEventListener("input", () => {
  const now = Date.now();
  if (S.open && now - S.lastTypingSent > 2000) {
    S.lastTypingSent = now;
    wsSend({ type: "typing", conversation: S.open.id });
  }
});

$("file").addEventListener("change", async () => {
  const f = $("file").files[0];
  $("file").value = "";
  if (!f || !S.open) return;
  try {
    const up = await api("POST", "/api/assets", undefined, { type: f.type, data: f });
    const caption = $("text").value;
    $("text").value = "";
    queueSend(caption, up.url);
  } catch (e) { toast("upload failed: " + e.message); }
});

$("add-member").addEventListener("click", async () => {
  const name = prompt("Add which user?");
  if (!name || !S.open) return;
  try {
    await api("POST", `/api/conversations/${S.open.id}/members`, { username: name.trim() });
    openConversation(S.open.id);
  } catch (e) { toast(e.message); }
});

$("leave").addEventListener("click", async () => {
  if (!S.open || !confirm("Leave this group?")) return;
  try {
    await api("DELETE", `/api/conversations/${S.open.id}/members/${S.me.id}`);
    openConversation(S.open.id);
    loadInbox();
  } catch (e) { toast(e.message); }
});

function toast(msg) {
  $("side-error").textContent = msg;
  setTimeout(() => { if ($("side-error").textContent === msg) $("side-error").textContent = ""; }, 5000);
}

if (S.token && S.me) {
  api("GET", "/api/me").then(start).catch(() => signedOut());
}
