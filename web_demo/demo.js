// The ticketgate QA demo: one page that drives the real gateway it is served by.
//
// Everything here talks to the same origin: the HTTP API with fetch, and
// Socket.IO with the pinned socket.io-client the gateway serves at
// /demo/vendor/. Sockets never reconnect by themselves (tickets are single
// use; a demo must show each close, not paper over it). Every received
// event, connect outcome, close and ack is written to the event log in order.

import {
  approvalHash,
  cryptoAvailable,
  generateDeviceKey,
  jwtClaims,
  signText,
  tamperedExpiredCopy,
  totpAt,
  totpStep,
} from "./crypto.js";

const $ = (id) => document.getElementById(id);
const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

// Events the gateway itself sends; anything else on a user socket is an application event.
const GATEWAY_EVENTS = new Set([
  "authenticated",
  "otp_ready",
  "approved",
  "rejected",
  "closing",
  "refresh_token",
  "auth_expiring",
  "reauth_required",
  "message",
  "demo_chat",
]);
const CONNECT_TIMEOUT_MS = 10_000;
const ACK_TIMEOUT_MS = 10_000;
const STORAGE = "ticketgate-demo:";

const state = {
  node: null, // X-Ticketgate-Node of the latest HTTP response
  phone: null, // {privateKey, publicJwk, deviceId, totpSecret, userId, period, digits, step, code}
  session: null, // the browser's current auth session
  jwt: null, // the latest access token (approval JWT or a pasted one)
  user: null, // the main authenticated socket and what it was told
  extraSockets: [], // more sockets of the same user in this tab (chat fan-out)
  chat: { room: null, mode: null, members: new Set(), lines: new Map() },
  reauthPending: false,
  counters: {},
  testEvents: 0,
};

// ── small helpers ─────────────────────────────────────────────────────────────

function clock(date = new Date()) {
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

function remaining(untilMs) {
  const seconds = Math.max(0, Math.round((untilMs - Date.now()) / 1000));
  if (seconds >= 3600) return `${Math.floor(seconds / 3600)} h ${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")} min`;
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

function shorten(text, keep = 14) {
  return text.length > keep + 8 ? `${text.slice(0, keep)}…(${text.length})` : text;
}

// Long strings (tokens, signatures) are shortened for display; the log stays readable.
function compact(value) {
  if (value === undefined) return "";
  const json = JSON.stringify(value, (key, v) => (typeof v === "string" && v.length > 40 ? shorten(v) : v));
  return json.length > 400 ? `${json.slice(0, 400)}…` : json;
}

function setText(id, text, tone) {
  const el = typeof id === "string" ? $(id) : id;
  el.textContent = text;
  if (tone !== undefined) el.dataset.tone = tone;
}

function resultFor(name) {
  return byTestId(`fail-result-${name}`);
}

function adminToken() {
  return $("admin-token").value.trim();
}

function userId() {
  return $("demo-user-id").value.trim();
}

function remember(key, value) {
  try {
    sessionStorage.setItem(STORAGE + key, JSON.stringify(value));
  } catch {
    // Storage may be off (private mode); the page works without it.
  }
}

function recall(key, fallback) {
  try {
    const raw = sessionStorage.getItem(STORAGE + key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Buttons run async actions; a failure is shown where the action reports, never thrown at the console.
function action(button, run, report) {
  button.addEventListener("click", async (event) => {
    event.preventDefault();
    if (button.getAttribute("aria-busy") === "true") return;
    button.setAttribute("aria-busy", "true");
    try {
      await run();
    } catch (err) {
      if (report) setText(report, err.message, "bad");
      note("page", `${button.textContent.trim()}: ${err.message}`);
    } finally {
      button.removeAttribute("aria-busy");
    }
  });
}

// ── the event log ─────────────────────────────────────────────────────────────

const eventLog = $("event-log");
const httpLog = $("http-log");

function append(list, item, counter) {
  const body = $("log-body");
  const atBottom = body.scrollHeight - body.scrollTop - body.clientHeight < 40;
  list.append(item);
  $(counter).textContent = String(list.children.length);
  if (atBottom && !list.hidden) body.scrollTop = body.scrollHeight;
}

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

/**
 * One entry per event, in arrival order; its text starts with the event name.
 * `tone`: ok | bad | warn | info decides the colour of the name.
 */
function logEvent(name, socketLabel, detail, { tone = "info", summary, tag } = {}) {
  const item = document.createElement("li");
  item.className = "entry";
  item.dataset.event = name;
  item.dataset.tone = tone;
  if (socketLabel) item.dataset.socket = socketLabel;
  const head = [span("entry-name", name)];
  if (summary) head.push(span("entry-summary", summary));
  if (socketLabel) head.push(span("entry-socket", socketLabel));
  if (tag) head.push(span("entry-tag", tag));
  // `type` repeats the event name in session events; the log shows the rest.
  const shown = detail && typeof detail === "object" && detail.type === name ? { ...detail, type: undefined } : detail;
  if (shown && shown !== detail) delete shown.type;
  fillEntry(item, head, shown);
  append(eventLog, item, "event-count");
  return item;
}

function logHttp(method, path, status, body, node) {
  const item = document.createElement("li");
  item.className = "entry";
  item.dataset.tone = status >= 200 && status < 300 ? "ok" : status === 0 ? "bad" : "warn";
  const code = body && body.error ? body.error.code : "";
  const head = [span("entry-name", `${method} ${path}`)];
  if (status || code) head.push(span("entry-summary", `${status || ""} ${code}`.trim()));
  if (node) head.push(span("entry-socket", node));
  fillEntry(item, head, body);
  append(httpLog, item, "http-count");
}

// Entry text reads "<name> <summary> <socket> <time> <data>": it starts with the name.
function fillEntry(item, headParts, detail) {
  const head = document.createElement("span");
  head.className = "entry-head";
  headParts.forEach((part, index) => {
    if (index) head.append(" ");
    head.append(part);
  });
  const time = document.createElement("time");
  time.className = "entry-time";
  time.dateTime = new Date().toISOString();
  time.textContent = clock();
  item.append(head, " ", time);
  const data = details(detail);
  if (data) item.append(" ", data);
}

// A payload as "key=value" pairs (nested values as compact JSON); null when there is nothing to show.
function details(detail) {
  if (detail === undefined || detail === null) return null;
  const box = document.createElement("span");
  box.className = "entry-data";
  if (typeof detail !== "object" || Array.isArray(detail)) {
    box.textContent = compact(detail);
    return box;
  }
  const keys = Object.keys(detail);
  if (!keys.length) return null;
  keys.forEach((key, index) => {
    const value = detail[key];
    const pair = document.createElement("span");
    pair.className = "kv";
    const text = typeof value === "string" ? (value.length > 40 ? shorten(value) : value) : compact(value);
    pair.append(span("k", key), "=", span("v", text));
    if (index) box.append(" ");
    box.append(pair);
  });
  return box;
}

// Notes are the page's own remarks (not gateway events); they go to the HTTP tab's list.
function note(source, text) {
  const item = document.createElement("li");
  item.className = "entry";
  item.dataset.tone = "warn";
  fillEntry(item, [span("entry-name", `note (${source})`)], { note: text });
  append(httpLog, item, "http-count");
}

function closingSummary(data) {
  return data && typeof data === "object" ? `${data.code} ${data.reason}` : "";
}

// ── HTTP ────────────────────────────────────────────────────────────────────

function setNode(node) {
  state.node = node;
  setText(byTestId("page-node"), `node: ${node}`);
}

/** One JSON call; resolves with {status, body, node}; status 0 = the gateway is unreachable. */
async function api(method, path, { body, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    logHttp(method, path, 0, { error: { code: "network_error", message: err.message } }, null);
    return { status: 0, body: { error: { code: "network_error", message: "the gateway cannot be reached" } }, node: null };
  }
  const node = response.headers.get("X-Ticketgate-Node");
  if (node) setNode(node);
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    parsed = null;
  }
  logHttp(method, path, response.status, parsed, node);
  return { status: response.status, body: parsed, node };
}

function attemptsLeftText(n) {
  return `${n} attempt${n === 1 ? "" : "s"} left`;
}

function errorText(result) {
  const error = result.body && result.body.error;
  if (!error) return `HTTP ${result.status}`;
  const left = error.attemptsLeft !== undefined ? ` (${attemptsLeftText(error.attemptsLeft)})` : "";
  return `${result.status} ${error.code}${left}`;
}

function requireAdmin(report) {
  const token = adminToken();
  if (!token) {
    setText(report, "Enter the admin token first (top right; `ticketgate serve --demo` prints it).", "bad");
    $("admin-token").focus();
    return null;
  }
  return token;
}

// ── sockets ─────────────────────────────────────────────────────────────────

/** A new Socket.IO connection whose whole life is written to the event log. */
function openSocket(kind, auth) {
  if (typeof io !== "function") throw new Error("socket.io-client did not load (/demo/vendor/socket.io.min.js)");
  state.counters[kind] = (state.counters[kind] || 0) + 1;
  const label = `${kind}#${state.counters[kind]}`;
  const socket = io({
    auth,
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    timeout: CONNECT_TIMEOUT_MS,
  });
  socket.label = label;
  socket.onAny((event, data) => {
    if (event === "closing") {
      socket.closing = data;
      const tone = data && data.code === 1000 ? "info" : "bad";
      logEvent("closing", label, undefined, { tone, summary: closingSummary(data) });
    } else {
      logEvent(event, label, data, { tone: eventTone(event) });
    }
  });
  socket.on("connect", () => logEvent("connect", label, undefined, { tone: "ok" }));
  socket.on("connect_error", (err) => {
    // err.data is the gateway's {code, reason}; err.message its text (or a transport error).
    const summary = err.data ? closingSummary(err.data) : "transport error";
    logEvent("connect_error", label, { message: err.message }, { tone: "bad", summary });
  });
  socket.on("disconnect", (reason) => logEvent("disconnect", label, undefined, { tone: "warn", summary: reason }));
  return socket;
}

function eventTone(event) {
  if (["authenticated", "approved", "otp_ready", "refresh_token"].includes(event)) return "ok";
  if (["rejected", "reauth_required"].includes(event)) return "bad";
  if (event === "auth_expiring") return "warn";
  return "info";
}

/** Resolves {ok: true} once connected, {ok: false, data} when refused. */
function connectOutcome(socket) {
  return withTimeout(
    new Promise((resolve) => {
      socket.once("connect", () => resolve({ ok: true }));
      socket.once("connect_error", (err) => resolve({ ok: false, data: err.data || { message: err.message } }));
    }),
    CONNECT_TIMEOUT_MS + 1000,
    "connect",
  );
}

/** emit with an ack, logged as `<event> ack`. */
async function emitWithAck(socket, event, payload) {
  let ack;
  try {
    ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
  } catch {
    ack = { ok: false, error: { code: 0, reason: "no_ack" } };
  }
  const summary = ack && ack.ok ? "ok" : `${ack.error.code} ${ack.error.reason}`;
  logEvent(event, socket.label, ack, { tone: ack && ack.ok ? "ok" : "bad", summary, tag: "ack" });
  return ack;
}

// ── 1. login by device approval: the browser ───────────────────────────────────

function setLoginStatus(text, tone) {
  setText("login-status", text, tone);
}

function closeSessionSockets() {
  const session = state.session;
  if (!session) return;
  for (const socket of session.sockets) if (socket.connected) socket.disconnect();
}

/** Initiate a session and wait on its socket; resolves once `otp_ready` arrived. */
async function startLogin() {
  const id = userId();
  if (!id) {
    setLoginStatus("enter a user id first", "bad");
    $("demo-user-id").focus();
    return null;
  }
  closeSessionSockets();
  setLoginStatus("starting…", "info");
  setText("browser-otp", "––––––");
  setText("login-hash", "–");
  const result = await api("POST", "/auth/initiate", { body: { userId: id } });
  if (result.status !== 201) {
    setLoginStatus(`could not start: ${errorText(result)}`, "bad");
    return null;
  }
  const session = {
    ...result.body,
    userId: id,
    status: "pending",
    sockets: [],
    socket: null,
    autoPassword: null,
    attemptsLeft: null,
  };
  state.session = session;
  setText("login-session", shorten(session.sessionId, 10));
  const ready = connectSession(session);
  renderPhoneRequest();
  return ready;
}

/** One more socket for the session (the newest replaces older ones: 4009). */
function connectSession(session) {
  const socket = openSocket("session", { sessionId: session.sessionId, wsToken: session.wsToken });
  session.sockets.push(socket);
  session.socket = socket;
  const ready = new Promise((resolve) => {
    socket.on("otp_ready", (data) => {
      session.autoPassword = data.autoPassword;
      setText("browser-otp", data.autoPassword);
      if (session.status === "pending") setLoginStatus("waiting for approval on the phone", "info");
      renderPhoneRequest();
      resolve(session);
    });
    socket.on("connect_error", (err) => {
      const data = err.data || {};
      if (session === state.session && socket === session.socket) {
        setLoginStatus(`refused: ${data.code || ""} ${data.reason || err.message}`.trim(), "bad");
      }
      resolve(null);
    });
  });
  socket.on("approved", (data) => onApproved(session, data).catch((err) => setLoginStatus(`approved, but: ${err.message}`, "bad")));
  socket.on("rejected", (data) => onRejected(session, data));
  socket.on("closing", (data) => onSessionClosing(session, socket, data));
  return withTimeout(ready, CONNECT_TIMEOUT_MS + 1000, "session socket");
}

async function onApproved(session, data) {
  session.status = "approved";
  setLoginStatus("approved", "ok");
  const expected = await approvalHash(session.wsToken, data.jwt, data.random);
  const genuine = expected === data.hash;
  setText(
    "login-hash",
    genuine ? "✓ hash verified: made by the gateway for this browser's session" : "✗ hash mismatch: do not trust this token",
    genuine ? "ok" : "bad",
  );
  setText("phone-result", "Approved ✓", "ok");
  renderPhoneRequest();
  useToken(data.jwt, "approval");
  if (state.reauthPending) {
    state.reauthPending = false;
    await sendAuthenticate(data.jwt);
  }
}

function onRejected(session, data) {
  session.attemptsLeft = data.attemptsLeft;
  if (data.final) {
    session.status = "rejected";
    setLoginStatus(`rejected — ${data.reason}`, "bad");
  } else {
    setLoginStatus(`rejected — ${data.reason} (${attemptsLeftText(data.attemptsLeft)})`, "bad");
  }
  renderPhoneRequest();
}

function onSessionClosing(session, socket, data) {
  if (data.code === 1000 && data.reason === "expired") {
    session.status = "expired";
    if (session === state.session) setLoginStatus("expired: start a new login", "warn");
  } else if (data.code === 4009 && session === state.session && socket === session.socket) {
    setLoginStatus("replaced (4009): a newer connection took this session", "warn");
  }
  renderPhoneRequest();
}

// ── 1. login by device approval: the phone ─────────────────────────────────────

async function enrollPhone() {
  const report = $("phone-result");
  if (!cryptoAvailable()) throw new Error("WebCrypto is unavailable: open the demo on http://127.0.0.1 or https");
  const id = userId();
  if (!id) {
    setText(report, "Enter a user id first.", "bad");
    return null;
  }
  setText(report, "Generating a P-256 key…", "info");
  const key = await generateDeviceKey();
  const result = await api("POST", "/auth/devices", { body: { userId: id, publicKey: key.publicJwk } });
  if (result.status !== 201) {
    setText(report, `Enrollment refused: ${errorText(result)}`, "bad");
    return null;
  }
  state.phone = {
    ...key,
    userId: id,
    deviceId: result.body.deviceId,
    totpSecret: result.body.totpSecret,
    period: result.body.period || 30,
    digits: result.body.digits || 6,
    step: null,
    code: null,
  };
  setText("phone-device", `enrolled for ${id} · device ${shorten(result.body.deviceId, 8)}`, "ok");
  setText(report, "Enrolled. The private key stays in WebCrypto (not extractable).", "ok");
  $("phone-enroll").textContent = "Enroll again";
  await tickPhone();
  return state.phone;
}

async function tickPhone() {
  const phone = state.phone;
  if (!phone) return;
  const now = Date.now();
  const step = totpStep(now, phone.period);
  if (step !== phone.step) {
    phone.step = step;
    phone.previousCode = await totpAt(phone.totpSecret, step - 1, phone.digits);
    phone.code = await totpAt(phone.totpSecret, step, phone.digits);
    setText("phone-code", phone.code);
    const input = $("phone-otp");
    if (input.dataset.edited !== "true") input.value = phone.code;
    renderPhoneRequest();
  }
  const left = phone.period - ((now / 1000) % phone.period);
  $("phone-ring").style.setProperty("--left", String(left / phone.period));
  $("phone-ring").dataset.seconds = String(Math.ceil(left));
}

function renderPhoneRequest() {
  const box = $("phone-request");
  const session = state.session;
  if (!session || session.status !== "pending") {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  setText("phone-request-user", session.userId);
  setText("phone-request-code", session.autoPassword || "…");
  const phone = state.phone;
  let match = "";
  let tone = "info";
  if (!phone) {
    match = "— enroll the phone to approve.";
  } else if (phone.userId !== session.userId) {
    match = `— this phone is enrolled for ${phone.userId}, so its approval will be refused.`;
    tone = "bad";
  } else if (session.autoPassword && phone.code) {
    // The browser's code was computed at initiation: it may be one 30 s step old by now.
    const shown = session.autoPassword.replace(/\*+$/, "");
    const same = phone.code.startsWith(shown) || (phone.previousCode || "").startsWith(shown);
    match = same ? "— matches this phone's code ✓" : "— differs from this phone's code: is it the right user?";
    tone = same ? "ok" : "warn";
  }
  setText("phone-request-match", match, tone);
}

/** Sign `approve.<sessionId>.<otp>` and POST /auth/verify; resolves with the HTTP result. */
async function phoneVerify(otp) {
  const report = $("phone-result");
  const phone = state.phone;
  const session = state.session;
  if (!phone) {
    setText(report, "Enroll the phone first.", "bad");
    return null;
  }
  if (!session || session.status !== "pending") {
    setText(report, "No pending login request: start one in the browser panel.", "bad");
    return null;
  }
  if (!/^[0-9]{6}$/.test(otp)) {
    setText(report, "The code is 6 digits.", "bad");
    $("phone-otp").focus();
    return null;
  }
  const signature = await signText(phone.privateKey, `approve.${session.sessionId}.${otp}`);
  const result = await api("POST", "/auth/verify", {
    body: { sessionId: session.sessionId, deviceId: phone.deviceId, otp, signature },
  });
  if (result.status === 200) setText(report, "Approved ✓", "ok");
  else setText(report, `Refused: ${errorText(result)}`, "bad");
  return result;
}

/** A 6-digit code that is none of the codes the gateway accepts right now (±1 step). */
async function wrongCode() {
  const phone = state.phone;
  const step = totpStep(Date.now(), phone.period);
  const valid = new Set();
  for (const s of [step - 1, step, step + 1, step + 2]) valid.add(await totpAt(phone.totpSecret, s, phone.digits));
  let candidate = (Number(phone.code || "0") + 500_000) % 1_000_000;
  while (valid.has(String(candidate).padStart(6, "0"))) candidate = (candidate + 1) % 1_000_000;
  return String(candidate).padStart(6, "0");
}

// ── 2. the authenticated socket ────────────────────────────────────────────────

function useToken(jwt, source) {
  state.jwt = jwt;
  const claims = jwtClaims(jwt);
  const history = recall("tokens", []).filter((entry) => entry.jwt !== jwt);
  history.push({ jwt, exp: claims.exp || 0 });
  remember("tokens", history.slice(-5));
  const expires = claims.exp ? new Date(claims.exp * 1000) : null;
  const amr = Array.isArray(claims.amr) ? ` · amr ${claims.amr.join("+")}` : "";
  const rooms = Array.isArray(claims.rooms) ? ` · rooms ${claims.rooms.join(", ")}` : "";
  setText(
    "token-summary",
    `${source} JWT for ${claims.sub || "?"}${amr}${rooms}${expires ? ` · exp ${clock(expires).slice(0, 8)}` : ""}`,
    "ok",
  );
}

/** POST /ws/ticket with the access token; the ticket or null (reported in `report`). */
async function fetchTicket(report) {
  if (!state.jwt) {
    setText(report, "No access token yet: log in (step 1) or paste a token.", "bad");
    return null;
  }
  const result = await api("POST", "/ws/ticket", { token: state.jwt });
  if (result.status !== 201) {
    setText(report, `No ticket: ${errorText(result)}`, "bad");
    return null;
  }
  return { ticket: result.body.ticket, node: result.node, expiresAt: result.body.expiresAt };
}

function setSocketStatus(text, tone) {
  setText("socket-status", text, tone);
}

async function connectUser() {
  const report = $("socket-result");
  setText(report, "");
  const issued = await fetchTicket(report);
  if (!issued) return;
  if (state.user && state.user.socket.connected) state.user.socket.disconnect();
  // `auth` as a callback: a ticket is single use, so a reconnect (after "Cut the
  // connection") fetches a fresh one, as docs/recovery.md tells apps to.
  let first = issued.ticket;
  const auth = (callback) => {
    if (first) {
      callback({ ticket: first });
      first = null;
      return;
    }
    fetchTicket(report).then((fresh) => callback(fresh ? { ticket: fresh.ticket } : {}));
  };
  const socket = openSocket("user", auth);
  const user = {
    socket,
    label: socket.label,
    token: state.jwt,
    sub: null,
    expiresAt: null,
    startedAt: Date.now(),
    node: issued.node,
    holdingSince: null,
    reauthSentAt: null,
    reauthOkAt: null,
  };
  state.user = user;
  setSocketStatus("connecting…", "info");
  setText("socket-node", issued.node ? `${issued.node} (X-Ticketgate-Node of the ticket request)` : "unknown");
  setText("socket-refresh", "none received");
  $("socket-banner").hidden = true;
  $("socket-held").replaceChildren();
  $("socket-held-box").hidden = true;
  wireUserSocket(user, socket, { main: true });
  const outcome = await connectOutcome(socket);
  if (!outcome.ok) {
    setSocketStatus(`refused: ${closingSummary(outcome.data) || outcome.data.message}`, "bad");
  }
}

/** Handlers every socket of the user has (the main one and the chat's extra ones). */
function wireUserSocket(user, socket, { main }) {
  socket.on("authenticated", (data) => {
    if (!main) return;
    user.sub = data.sub;
    user.expiresAt = Date.parse(data.expiresAt);
    const recovered = data.recovered ? " · recovered: missed events replayed" : "";
    setSocketStatus(`authenticated as ${data.sub} via ${data.via}${recovered}`, "ok");
    showOnline().catch((err) => note("page", err.message));
    renderExpiry();
  });
  socket.on("refresh_token", (data) => {
    if (!main) return;
    user.refresh = data;
    setText("socket-refresh", `${shorten(data.refreshToken, 10)} · expires ${data.expiresAt}`, "ok");
  });
  socket.on("auth_expiring", (data) => {
    if (!main) return;
    user.expiresAt = Date.parse(data.expiresAt) || user.expiresAt;
    showBanner(`auth_expiring: this socket's authentication ends in ${data.in} s. Re-authenticate to keep it.`, "warn");
    setSocketStatus(`authenticated as ${user.sub} · expiring`, "warn");
  });
  socket.on("reauth_required", (data) => {
    if (!main) return;
    user.holdingSince = Date.now();
    user.reauthSentAt = null;
    user.reauthOkAt = null;
    user.deadline = Date.parse(data.deadline);
    showBanner(
      `reauth_required: events are now held until you re-authenticate (deadline ${data.deadline}).`,
      "bad",
    );
    setSocketStatus(`reauth required: events held`, "bad");
  });
  socket.on("closing", (data) => {
    if (main) setSocketStatus(`closed ${data.code} ${data.reason}`, data.code === 1000 ? "info" : "bad");
  });
  socket.on("disconnect", (reason) => {
    if (main && !socket.closing && user === state.user) setSocketStatus(`disconnected (${reason})`, "warn");
    renderExpiry();
  });
  socket.on("message", (data) => onChatMessage(socket, data));
  socket.on("demo_chat", (data) => onRelayedChat(socket, data));
  if (main) {
    for (const event of ["user_joined", "user_left"]) {
      socket.on(event, (data) => {
        if (data && data.room === state.chat.room) showPresence().catch((err) => note("page", err.message));
        showOnline().catch((err) => note("page", err.message));
      });
    }
  }
  socket.onAny((event, data) => {
    if (main && !GATEWAY_EVENTS.has(event)) noteApplicationEvent(user, event, data);
  });
}

function showBanner(text, tone) {
  const banner = $("socket-banner");
  banner.hidden = false;
  setText(banner, text, tone);
}

function noteApplicationEvent(user, event, data) {
  // Held events: published while the socket waited for re-authentication
  // (reauth_required), delivered once `authenticate` succeeds. Parked events:
  // held for an earlier socket of the user that never re-authenticated,
  // delivered to this newer one first. The page's own test events carry
  // `sentAt`; for other events the time of arrival decides.
  const sentAt = data && typeof data === "object" ? Date.parse(data.sentAt) : NaN;
  const known = !Number.isNaN(sentAt);
  let kind = null;
  if (known && sentAt < user.startedAt) {
    kind = "parked";
  } else if (user.holdingSince && user.reauthSentAt) {
    const inWindow = known
      ? sentAt >= user.holdingSince && sentAt <= user.reauthSentAt
      : !user.reauthOkAt || Date.now() - user.reauthOkAt < 1500;
    if (inWindow) kind = "held";
  }
  if (!kind) return;
  const item = document.createElement("li");
  const pairs = details(data);
  item.textContent = `${event} ${pairs ? pairs.textContent : ""} · ${kind}, received ${clock()}`;
  $("socket-held").append(item);
  $("socket-held-box").hidden = false;
  const last = eventLog.lastElementChild;
  if (last && last.dataset.event === event) last.firstElementChild.append(" ", span("entry-tag", kind));
}

function renderExpiry() {
  const user = state.user;
  const el = $("socket-expiry");
  const meter = $("socket-meter");
  if (!user || !user.expiresAt || !user.socket.connected) {
    setText(el, "–");
    meter.style.width = "0%";
    return;
  }
  const total = Math.max(1, user.expiresAt - user.startedAt);
  const left = user.expiresAt - Date.now();
  const fraction = Math.max(0, Math.min(1, left / total));
  meter.style.width = `${(fraction * 100).toFixed(1)}%`;
  meter.dataset.tone = fraction < 0.1 ? "bad" : fraction < 0.3 ? "warn" : "ok";
  if (left > 0) {
    setText(el, `in ${remaining(user.expiresAt)} (${new Date(user.expiresAt).toISOString().replace(".000", "")})`, "ok");
  } else if (user.deadline && user.deadline > Date.now()) {
    setText(el, `expired · re-authenticate within ${remaining(user.deadline)}`, "bad");
  } else {
    setText(el, "expired", "bad");
  }
}

async function reauthenticate() {
  const report = $("socket-result");
  const user = state.user;
  if (!user || !user.socket.connected) {
    setText(report, "Connect the socket first.", "bad");
    return;
  }
  const claims = state.jwt ? jwtClaims(state.jwt) : {};
  const fresh = state.jwt && state.jwt !== user.token && (claims.exp || 0) * 1000 > Date.now() + 2000;
  if (fresh) {
    await sendAuthenticate(state.jwt);
    return;
  }
  // A token is spent with the socket's auth: a new one comes from a new device approval.
  state.reauthPending = true;
  setText(report, "Approve the new login on the phone (step 1); the socket re-authenticates with its token.", "info");
  await startLogin();
  $("phone-approve").focus({ preventScroll: true });
  $("phone-approve").scrollIntoView({ block: "center", behavior: "smooth" });
}

async function sendAuthenticate(token) {
  const user = state.user;
  const report = $("socket-result");
  if (!user || !user.socket.connected) {
    setText(report, "The socket closed before it could re-authenticate.", "bad");
    return;
  }
  user.reauthSentAt = Date.now();
  const ack = await emitWithAck(user.socket, "authenticate", { token });
  if (ack.ok) {
    user.token = token;
    user.reauthOkAt = Date.now();
    user.startedAt = Date.now();
    user.expiresAt = Date.parse(ack.expiresAt) || user.expiresAt;
    user.deadline = null;
    $("socket-banner").hidden = true;
    setSocketStatus(`authenticated as ${ack.sub} (re-authenticated)`, "ok");
    setText(report, "Re-authenticated ✓ — held events, if any, are listed below.", "ok");
    renderExpiry();
  } else {
    setText(report, `Re-authentication refused: ${ack.error.code} ${ack.error.reason}`, "bad");
  }
}

async function publishTestEvent() {
  const report = $("socket-result");
  const token = requireAdmin(report);
  if (!token) return;
  const sub = (state.user && state.user.sub) || jwtClaims(state.jwt || "").sub || userId();
  state.testEvents += 1;
  const data = { n: state.testEvents, sentAt: new Date().toISOString(), from: state.node };
  const result = await api("POST", "/api/publish", {
    token,
    body: { room: `user:${sub}`, event: "demo_notice", data },
  });
  if (result.status === 202) setText(report, `Published demo_notice #${data.n} to user:${sub}.`, "ok");
  else setText(report, `Publish refused: ${errorText(result)}`, "bad");
}

const CUT_MS = 3000;

/** Drop the user socket's transport as a network would (no goodbye), publish 3
 * test events while it is away, then reconnect: the gateway's connection state
 * recovery (docs/recovery.md) hands them over, and socket.recovered says so. */
async function cutConnection() {
  const report = $("socket-result");
  const user = state.user;
  if (!user || !user.socket.connected) {
    setText(report, "Connect first (Get a ticket and connect).", "bad");
    return;
  }
  if (!requireAdmin(report)) return;
  const socket = user.socket;
  const cutAt = Date.now();
  socket.io.engine.close();
  setSocketStatus("connection cut: 3 events are published meanwhile", "warn");
  for (let i = 0; i < 3; i += 1) await publishTestEvent();
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, cutAt + CUT_MS - Date.now())));
  socket.once("connect", () => {
    const how = socket.recovered ? "recovered: the 3 events follow" : "not recovered: a fresh socket";
    setText(report, `Reconnected after ${((Date.now() - cutAt) / 1000).toFixed(1)} s, ${how}.`, socket.recovered ? "ok" : "warn");
  });
  socket.connect();
}

async function useCustomToken() {
  const token = $("custom-token").value.trim();
  const report = $("socket-result");
  if (token.split(".").length !== 3) {
    setText(report, "That is not a JWT (three dot-separated parts).", "bad");
    return;
  }
  useToken(token, "pasted");
  setText(report, "Token set: now connect with a ticket.", "ok");
}

// ── 3. chat ───────────────────────────────────────────────────────────────────

function chatSockets() {
  const sockets = [];
  if (state.user && state.user.socket.connected) sockets.push(state.user.socket);
  for (const socket of state.extraSockets) if (socket.connected) sockets.push(socket);
  return sockets;
}

function setChatMode(text, tone) {
  setText("chat-mode", text, tone);
}

async function joinChat() {
  const name = $("chat-room").value.trim().replace(/^room:/, "");
  if (!name || /\s/.test(name)) {
    setChatMode("A room name has no spaces.", "bad");
    return;
  }
  const sockets = chatSockets();
  if (!sockets.length) {
    setChatMode("Connect the socket first (step 2).", "bad");
    return;
  }
  const room = `room:${name}`;
  state.chat.room = room;
  const acks = [];
  for (const socket of sockets) acks.push(await emitWithAck(socket, "join", { room }));
  const sub = state.user.sub;
  if (acks.every((ack) => ack.ok)) {
    state.chat.mode = "room";
    $("chat-members-row").hidden = true;
    setChatMode(`Joined ${room} with ${sockets.length} socket(s): messages travel as Socket.IO message events.`, "ok");
    await showPresence();
  } else if (acks.some((ack) => !ack.ok && ack.error.code === 4003)) {
    // The approval JWT carries no `rooms` claim, so the gateway refuses `join`.
    // The demo then relays through the admin API to each member's user:<sub> room.
    state.chat.mode = "relay";
    state.chat.members.add(sub);
    $("chat-members-row").hidden = false;
    setChatMode(
      `join refused (4003: this token has no rooms claim). Relay mode: messages go through POST /api/publish to user:<sub> of ${sub} and the users listed below (needs the admin token).`,
      "warn",
    );
  } else {
    state.chat.mode = null;
    setChatMode(`join failed: ${acks.map((ack) => (ack.ok ? "ok" : ack.error.reason)).join(", ")}`, "bad");
  }
}

/** Who is in the chat room (the `presence` event's first page), kept live by
 * user_joined / user_left; and whether the user is online (GET /api/users/{sub}). */
async function showPresence() {
  const room = state.chat.room;
  const socket = state.user && state.user.socket;
  if (!room || state.chat.mode !== "room" || !socket || !socket.connected) return;
  const ack = await emitWithAck(socket, "presence", { room });
  const line = $("chat-presence");
  line.hidden = false;
  if (!ack.ok) {
    setText(line, `presence: ${ack.error.reason}`, "bad");
    return;
  }
  const members = ack.members.map((member) => `${member.sub} (${member.connections})`).join(", ");
  setText(line, `In ${room}: ${ack.users} user(s): ${members}`, "ok");
}

async function showOnline() {
  const user = state.user;
  const token = adminToken();
  if (!user || !user.sub || !token) {
    setText("user-online", token ? "–" : "enter the admin token to see it");
    return;
  }
  const result = await api("GET", `/api/users/${encodeURIComponent(user.sub)}`, { token });
  if (result.status !== 200) {
    setText("user-online", `unknown: ${errorText(result)}`, "bad");
    return;
  }
  const { online, connections } = result.body;
  setText("user-online", online ? `online · ${connections} connection(s) in the cluster` : "offline", online ? "ok" : "warn");
}

function relayMembers() {
  const listed = $("chat-members")
    .value.split(/[\s,]+/)
    .map((member) => member.trim())
    .filter(Boolean);
  return [...new Set([...state.chat.members, ...listed])];
}

async function sendChat() {
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text) return;
  const { mode, room } = state.chat;
  if (!mode) {
    setChatMode("Join the room first.", "bad");
    return;
  }
  const node = (state.user && state.user.node) || state.node;
  if (mode === "room") {
    const ack = await emitWithAck(state.user.socket, "message", { room, data: { text, node } });
    if (!ack.ok) {
      setChatMode(`message refused: ${ack.error.code} ${ack.error.reason}`, "bad");
      return;
    }
  } else {
    const token = requireAdmin($("chat-mode"));
    if (!token) return;
    const members = relayMembers();
    const data = {
      id: `relay-${Date.now()}-${Math.random().toString(16).slice(2, 8)}`,
      ts: new Date().toISOString(),
      room,
      from: state.user.sub,
      members,
      text,
      node,
    };
    for (const member of members) {
      const result = await api("POST", "/api/publish", {
        token,
        body: { room: `user:${member}`, event: "demo_chat", data },
      });
      if (result.status !== 202) {
        setChatMode(`relay to ${member} refused: ${errorText(result)}`, "bad");
        return;
      }
    }
  }
  input.value = "";
}

function onChatMessage(socket, data) {
  if (!data || data.room !== state.chat.room) return;
  const body = data.data && typeof data.data === "object" ? data.data : { text: JSON.stringify(data.data) };
  addChatLine({ id: data.id, ts: data.ts, from: data.sub, text: body.text, node: body.node }, socket.label);
}

function onRelayedChat(socket, data) {
  if (!data || !data.id) return;
  // Relay mode learns the other members from whom it hears, so that replies reach them.
  for (const member of [data.from, ...(data.members || [])]) if (member) state.chat.members.add(member);
  addChatLine({ id: data.id, ts: data.ts, from: data.from, text: data.text, node: data.node, relayed: true }, socket.label);
}

function addChatLine(message, socketLabel) {
  let line = state.chat.lines.get(message.id);
  if (!line) {
    line = document.createElement("li");
    line.className = "chat-line";
    line.dataset.from = message.from || "";
    if (state.user && message.from === state.user.sub) line.classList.add("mine");
    const head = document.createElement("div");
    head.className = "chat-head";
    head.append(span("chat-from", message.from || "?"));
    if (message.node) head.append(" ", span("chat-node", `via ${message.node}`));
    head.append(" ", span("chat-time", clock(new Date(message.ts || Date.now())).slice(0, 8)));
    line.append(head, span("chat-text", message.text || ""), document.createElement("div"));
    line.lastElementChild.className = "chat-receivers";
    line.receivers = [];
    state.chat.lines.set(message.id, line);
    $("chat-log").append(line);
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
  }
  line.receivers.push(socketLabel);
  line.lastElementChild.textContent = `received by ${line.receivers.join(", ")}${message.relayed ? " · relayed" : ""}`;
}

async function addChatSocket() {
  const report = $("chat-mode");
  if (!state.user || !state.user.socket.connected) {
    setChatMode("Connect the main socket first (step 2).", "bad");
    return;
  }
  const issued = await fetchTicket(report);
  if (!issued) return;
  const socket = openSocket("user", { ticket: issued.ticket });
  state.extraSockets.push(socket);
  wireUserSocket(state.user, socket, { main: false });
  const outcome = await connectOutcome(socket);
  if (!outcome.ok) return;
  if (state.chat.mode === "room") await emitWithAck(socket, "join", { room: state.chat.room });
  setChatMode(`${chatSockets().length} sockets of ${state.user.sub} in this tab.`, "info");
  await showPresence();  // one more connection, the same users: no user_joined, so ask
  await showOnline();
}

// ── 4. failure cases ───────────────────────────────────────────────────────────

async function reuseTicket() {
  const report = resultFor("reuse-ticket");
  setText(report, "");
  const issued = await fetchTicket(report);
  if (!issued) return;
  const first = openSocket("reuse", { ticket: issued.ticket });
  const firstOutcome = await connectOutcome(first);
  const second = openSocket("reuse", { ticket: issued.ticket });
  const secondOutcome = await connectOutcome(second);
  const firstText = firstOutcome.ok ? "first use connected ✓" : `first use refused (${closingSummary(firstOutcome.data)})`;
  const refused = !secondOutcome.ok && secondOutcome.data.reason === "invalid_ticket";
  const secondText = secondOutcome.ok
    ? "second use connected ✗ (a ticket must be single-use)"
    : `second use refused: ${closingSummary(secondOutcome.data)}${refused ? " ✓" : ""}`;
  setText(report, `${firstText}; ${secondText}`, refused && firstOutcome.ok ? "ok" : "bad");
  first.disconnect();
  second.disconnect();
}

async function wrongOtpThreeTimes() {
  const report = resultFor("wrong-otp");
  setText(report, "");
  if (!state.phone || state.phone.userId !== userId()) {
    if (!(await enrollPhone())) {
      setText(report, "The phone could not be enrolled.", "bad");
      return;
    }
  }
  if (!state.session || state.session.status !== "pending" || !state.session.socket?.connected) {
    if (!(await startLogin())) {
      setText(report, "No login session could be started.", "bad");
      return;
    }
  }
  const steps = [];
  for (let attempt = 0; attempt < 10; attempt += 1) {
    const result = await phoneVerify(await wrongCode());
    if (!result) break;
    steps.push(errorText(result));
    if (result.status !== 401) break;
  }
  const done = steps.length && steps[steps.length - 1].includes("too_many_attempts");
  setText(report, steps.join(" → "), done ? "ok" : "bad");
}

async function secondConnection() {
  const report = resultFor("second-connection");
  setText(report, "");
  let session = state.session;
  if (!session || session.status !== "pending" || !session.socket || !session.socket.connected) {
    session = await startLogin();
    if (!session) {
      setText(report, "No login session could be started.", "bad");
      return;
    }
  }
  const older = session.socket;
  const closed = withTimeout(
    new Promise((resolve) => older.once("closing", resolve)),
    CONNECT_TIMEOUT_MS,
    "closing on the older socket",
  );
  await connectSession(session);
  const data = await closed;
  const ok = data.code === 4009;
  setText(
    report,
    `${older.label} got closing ${closingSummary(data)}${ok ? " ✓" : ""}; ${session.socket.label} now waits for the approval.`,
    ok ? "ok" : "bad",
  );
}

async function expiredToken() {
  const report = resultFor("expired-token");
  setText(report, "");
  const now = Date.now() / 1000;
  const known = recall("tokens", []).filter((entry) => entry.exp && entry.exp < now);
  let token;
  let explanation;
  if (known.length) {
    token = known[known.length - 1].jwt;
    explanation = `a real gateway token of this tab that expired at ${new Date(known[known.length - 1].exp * 1000).toISOString()}`;
  } else if (state.jwt) {
    token = tamperedExpiredCopy(state.jwt);
    const exp = jwtClaims(state.jwt).exp;
    explanation =
      "no token of yours has expired yet" +
      (exp ? ` (the current one expires at ${new Date(exp * 1000).toISOString()})` : "") +
      ", so a copy with exp an hour ago was sent; its signature no longer matches, hence invalid_token. " +
      "For token_expired, run the gateway with a short access_token_ttl and retry once the token has expired";
  } else {
    setText(report, "Log in first (step 1): the test needs a gateway token.", "bad");
    return;
  }
  const socket = openSocket("expired", { token });
  const outcome = await connectOutcome(socket);
  if (outcome.ok) {
    setText(report, `connected ✗ — ${explanation}; the gateway accepted it.`, "bad");
    socket.disconnect();
    return;
  }
  const expected = known.length ? "token_expired" : "invalid_token";
  const ok = outcome.data.reason === expected;
  setText(report, `refused: ${closingSummary(outcome.data)}${ok ? " ✓" : ""} — ${explanation}.`, ok ? "ok" : "bad");
}

async function disconnectUser() {
  const report = resultFor("disconnect-user");
  setText(report, "");
  const token = requireAdmin(report);
  if (!token) return;
  const sub = (state.user && state.user.sub) || jwtClaims(state.jwt || "").sub || userId();
  const revokeTokens = $("fail-revoke").checked;
  const result = await api("POST", `/api/users/${encodeURIComponent(sub)}/disconnect`, {
    token,
    body: { revokeTokens },
  });
  if (result.status === 200) {
    setText(report, `disconnected ${result.body.disconnected} socket(s) of ${sub}${revokeTokens ? "; tokens revoked" : ""} ✓`, "ok");
  } else if (result.status === 404 || result.status === 405) {
    setText(report, `This gateway has no disconnect API yet (${result.status}).`, "bad");
  } else {
    setText(report, `Refused: ${errorText(result)}`, "bad");
  }
}

// ── wiring ────────────────────────────────────────────────────────────────────

function setupTabs() {
  const tabs = [$("tab-events"), $("tab-http")];
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    $("log-body").scrollTop = $("log-body").scrollHeight;
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
      const next = tabs[(tabs.indexOf(tab) + 1) % tabs.length];
      select(next);
      next.focus();
    });
  }
  $("log-clear").addEventListener("click", () => {
    eventLog.replaceChildren();
    httpLog.replaceChildren();
    $("event-count").textContent = "0";
    $("http-count").textContent = "0";
  });
  $("log-toggle").addEventListener("click", () => {
    const panel = $("event-log-panel");
    const collapsed = panel.classList.toggle("collapsed");
    $("log-toggle").setAttribute("aria-expanded", String(!collapsed));
    $("log-toggle").textContent = collapsed ? "Show" : "Hide";
  });
}

function tick() {
  const session = state.session;
  if (session && session.status === "pending") {
    const left = Date.parse(session.expiresAt) - Date.now();
    setText("login-expires", left > 0 ? remaining(Date.parse(session.expiresAt)) : "0:00");
  } else {
    setText("login-expires", "–");
  }
  renderExpiry();
  tickPhone().catch((err) => note("phone", err.message));
}

function init() {
  $("admin-form").addEventListener("submit", (event) => event.preventDefault());
  if (!cryptoAvailable()) byTestId("crypto-warning").hidden = false;
  $("admin-token").value = recall("admin", "");
  $("admin-token").addEventListener("change", () => remember("admin", adminToken()));
  $("demo-user-id").value = recall("user", $("demo-user-id").value);
  $("demo-user-id").addEventListener("change", () => {
    remember("user", userId());
    renderPhoneRequest();
  });
  $("phone-otp").addEventListener("input", () => {
    $("phone-otp").dataset.edited = "true";
  });

  action($("login-start"), startLogin);
  action($("phone-enroll"), enrollPhone, $("phone-result"));
  $("phone-form").addEventListener("submit", (event) => event.preventDefault());
  action($("phone-approve"), async () => {
    await phoneVerify($("phone-otp").value.trim());
    $("phone-otp").dataset.edited = "false";
  }, $("phone-result"));
  action($("phone-wrong"), async () => {
    if (!state.phone) {
      setText("phone-result", "Enroll the phone first.", "bad");
      return;
    }
    await phoneVerify(await wrongCode());
  }, $("phone-result"));

  action($("socket-connect"), connectUser, $("socket-result"));
  action($("socket-reauth"), reauthenticate, $("socket-result"));
  action($("socket-publish"), publishTestEvent, $("socket-result"));
  action($("socket-cut"), cutConnection, $("socket-result"));
  action($("socket-disconnect"), async () => {
    for (const socket of [state.user?.socket, ...state.extraSockets]) if (socket && socket.connected) socket.disconnect();
  });
  action($("custom-token-use"), useCustomToken, $("socket-result"));

  action($("chat-join"), joinChat, $("chat-mode"));
  action($("chat-add-socket"), addChatSocket, $("chat-mode"));
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sendChat().catch((err) => setChatMode(err.message, "bad"));
  });

  action($("fail-reuse-ticket"), reuseTicket, resultFor("reuse-ticket"));
  action($("fail-wrong-otp"), wrongOtpThreeTimes, resultFor("wrong-otp"));
  action($("fail-second-connection"), secondConnection, resultFor("second-connection"));
  action($("fail-expired-token"), expiredToken, resultFor("expired-token"));
  action($("fail-disconnect-user"), disconnectUser, resultFor("disconnect-user"));

  setupTabs();
  setInterval(tick, 250);
  // Learn which node serves this page before anything else happens.
  api("GET", "/healthz").catch(() => {});
  document.body.dataset.ready = "true";
}

init();
