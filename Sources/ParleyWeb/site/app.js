// Parley's web client: IRCv3 over the WebSocket at /irc of the page's own origin.
// One `state` object owns everything shown; `render()` draws it. Lines in, lines out.
import { parse, serialize, nickOf, fold } from "./irc.js";
import { ScramClient, available as scramAvailable, base64 } from "./scram.js";
import { interpret, groupName } from "./commands.js";

const wantedCaps = ["sasl", "echo-message", "labeled-response", "batch", "server-time", "message-tags",
  "draft/chathistory", "draft/read-marker", "parley.chat/receipts", "draft/account-registration",
  "account-tag", "extended-monitor", "cap-notify", "multi-prefix", "draft/channel-rename"];
const storageKey = "parley.login";
const historyPage = 50;
const $ = (id) => document.getElementById(id);

const state = {
  account: "",
  secret: null,          // { password } while logging in, or remembered SCRAM keys
  creating: false,
  socket: null,
  caps: new Set(),
  offered: new Set(),
  nick: "",
  registered: false,
  loggedIn: false,
  wantConnection: false,
  retries: 0,
  retryTimer: null,
  scram: null,
  labels: new Map(),     // label -> what it answers
  nextLabel: 1,
  batches: new Map(),    // reference -> { type, target, label }
  conversations: new Map(), // folded name -> conversation
  open: null,            // folded name of the open conversation
  outgoing: new Map(),   // cid -> message (ours, not final yet)
  cidPrefix: Math.random().toString(36).slice(2, 10),
  openDetails: new Set(), // msgids whose "who has it" is open
};

// MARK: conversations and messages

function conversation(name) {
  const key = fold(name);
  let entry = state.conversations.get(key);
  if (!entry) {
    entry = { name, key, group: name.startsWith("#"), messages: [], ids: new Set(), unread: 0, online: null, lastSeen: null,
      marker: null, historyLoaded: false, noOlder: false, members: [], owner: null, loadingOlder: false };
    state.conversations.set(key, entry);
    if (!entry.group && state.registered) send("MONITOR", "+", name);
  }
  return entry;
}

function insertMessage(conv, message, olderPage = null) {
  if (message.msgid && conv.ids.has(message.msgid)) {
    const existing = conv.messages.find((m) => m.msgid === message.msgid);
    // The same message from history and from the replay of what was missed: still missed.
    if (existing && message.missed) existing.missed = true;
    return existing;
  }
  if (message.msgid) conv.ids.add(message.msgid);
  // Kept in time order: history arrives older than what is shown. A page of older history goes
  // before everything shown, in its own order (messages of one millisecond share a time).
  let index = conv.messages.length;
  if (olderPage) {
    index = olderPage.insertAt ?? conv.messages.findIndex((m) => !m.system && m.time && m.time >= message.time);
    if (index < 0) index = conv.messages.length;
    olderPage.insertAt = index + 1;
  } else {
    while (index > 0 && message.time && conv.messages[index - 1].time && conv.messages[index - 1].time > message.time) index--;
  }
  conv.messages.splice(index, 0, message);
  return message;
}

function isOnScreen(conv) {
  return conv && state.open === conv.key && document.visibilityState === "visible" && document.hasFocus();
}

function stateWords(message) {
  if (message.state === "failed") return `failed: ${message.reason || "not sent"}`;
  if (message.state !== "sent" && message.state !== "sending") return message.state;
  const readers = Object.values(message.readers || {});
  if (!readers.length) return message.state;
  const conv = state.conversations.get(fold(message.target));
  if (conv && conv.group) {
    const read = readers.filter((r) => r === "read").length;
    const delivered = readers.filter((r) => r === "delivered" || r === "read").length;
    if (read === readers.length) return "read";
    if (delivered === readers.length) return read ? `delivered, read ${read}/${readers.length}` : "delivered";
    return delivered ? `delivered ${delivered}/${readers.length}` : "sent";
  }
  return readers.includes("read") ? "read" : readers.includes("delivered") ? "delivered" : message.state;
}

// MARK: the connection

function socketURL() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/irc`;
}

function send(command, ...params) {
  sendTagged({}, command, ...params);
}

function sendTagged(tags, command, ...params) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(serialize(command, params, tags));
}

function labelFor(meaning) {
  const label = `w${state.nextLabel++}`;
  state.labels.set(label, meaning);
  return label;
}

function connect() {
  clearTimeout(state.retryTimer);
  state.wantConnection = true;
  state.caps = new Set();
  state.offered = new Set();
  state.registered = false;
  state.batches.clear();
  state.labels.clear();
  setConnection(state.retries ? "Reconnecting…" : "Connecting…");
  const socket = new WebSocket(socketURL(), ["text.ircv3.net"]);
  state.socket = socket;
  socket.onopen = () => {
    send("CAP", "LS", "302");
    send("NICK", state.account);
    send("USER", state.account, "0", "*", state.account);
  };
  socket.onmessage = (event) => {
    if (socket !== state.socket) return;
    const data = typeof event.data === "string" ? event.data : "";
    for (const line of data.split(/\r?\n/)) if (line) handle(parse(line));
  };
  socket.onclose = () => {
    if (socket !== state.socket) return;
    state.socket = null;
    state.registered = false;
    for (const conv of state.conversations.values()) if (!conv.group) conv.online = null;
    if (!state.wantConnection) return;
    if (state.quickReconnect) {
      state.quickReconnect = false;
      connect();
      return;
    }
    if (!state.loggedIn) {
      // Never logged in on this attempt (refused, or the server is not there): say so.
      if (!$("chat").hidden) scheduleReconnect();
      else showLogin("Could not reach the server. Try again.");
      return;
    }
    scheduleReconnect();
    render();
  };
}

function scheduleReconnect() {
  // Backoff with jitter, so that a restarted server is not met by every browser at once.
  const delay = Math.min(30000, 1000 * 2 ** Math.min(state.retries, 5)) * (0.75 + Math.random() * 0.5);
  state.retries++;
  setConnection(`Disconnected; reconnecting in ${Math.round(delay / 1000)} s`);
  state.retryTimer = setTimeout(connect, delay);
}

function setConnection(text) {
  $("connection").textContent = text;
}

// MARK: what the server says

function handle(message) {
  const { command, params, tags } = message;
  const batch = tags.batch ? state.batches.get(tags.batch) : null;
  // Replies in a labeled-response batch answer the batch's label.
  const label = tags.label || (batch && batch.label) || undefined;
  switch (command) {
    case "PING": send("PONG", ...params); break;
    case "CAP": handleCap(params); break;
    case "AUTHENTICATE": handleAuthenticate(params[0]); break;
    case "903": send("CAP", "END"); break;
    case "904": case "902": case "464": case "908": loginFailed(params[params.length - 1]); break;
    case "001":
      state.registered = true;
      state.nick = params[0];
      if (state.creating) {
        sendTagged({ label: labelFor({ kind: "register" }) }, "REGISTER", "*", "*", state.secret.password);
      } else if (state.caps.has("sasl")) {
        loggedIn();
      } else {
        loginFailed("This server did not offer a login.");
      }
      break;
    case "REGISTER":
      if (params[0] === "SUCCESS") {
        state.creating = false;
        loggedIn();
        notice(`Account ${params[1] || state.account} created.`);
        if (scramAvailable()) {
          // Log in once more with SCRAM, so the browser can remember keys instead of a password.
          state.quickReconnect = true;
          send("QUIT", "Logging in");
        }
      }
      break;
    case "FAIL": handleFail(message, label); break;
    case "WARN": notice(params[params.length - 1]); break;
    case "NOTE": handleNote(message, label); break;
    case "BATCH": handleBatch(message, label); break;
    case "PRIVMSG": case "NOTICE": handleMessage(message, label, batch); break;
    case "RECEIPT": handleReceipt(params); break;
    case "RECEIPTS": if (params[0] === "READ") notice(params[params.length - 1]); break;
    case "MARKREAD": handleMarkread(params); break;
    case "CHATHISTORY":
      if (params[0] === "TARGETS" && params[1] && !["NickServ", "ChanServ"].includes(params[1])) conversation(params[1]);
      break;
    case "730": for (const who of (params[1] || "").split(",")) setPresence(nickOf(who), true); break;
    case "731": for (const who of (params[1] || "").split(",")) setPresence(nickOf(who), false); break;
    case "JOIN": handleJoin(message); break;
    case "PART": case "KICK": handleLeave(message); break;
    case "RENAME": handleRename(params); break;
    case "353": handleNames(params); break;
    case "311": { const meaning = label && state.labels.get(label); if (meaning && meaning.kind === "whois") meaning.online = true; break; }
    case "401": {
      // An offline account's WHOIS is 401 then NOTE WHOIS LAST_SEEN, in one batch: the note says it all.
      const meaning = label && state.labels.get(label);
      if (!meaning || meaning.kind !== "whois") notice(`${params[1]}: no such user`);
      else if (!batch && meaning.seen) notice(`${params[1]}: no such user`);
      break;
    }
    case "404": case "482": case "403": case "442": case "473": notice(params[params.length - 1]); break;
    case "341": notice(`${params[1]} was added to ${params[2]}.`); requestMembers(params[2]); break;
    case "NICK": if (nickOf(message.source) === state.nick) state.nick = params[0]; break;
    case "ERROR": notice(params[0] || "The server closed the connection."); break;
    default: break;
  }
  if (command !== "BATCH" && label && !batch) state.labels.delete(label);
  render();
}

function handleCap(params) {
  const sub = params[1];
  const list = (params[params.length - 1] || "").split(" ").filter(Boolean).map((c) => c.split("=")[0]);
  if (sub === "LS") {
    list.forEach((c) => state.offered.add(c));
    if (params[2] === "*") return;
    const wanted = wantedCaps.filter((c) => state.offered.has(c) && !(state.creating && c === "sasl"));
    if (wanted.length) send("CAP", "REQ", wanted.join(" "));
    else send("CAP", "END");
  } else if (sub === "ACK") {
    list.forEach((c) => state.caps.add(c));
    if (state.caps.has("sasl") && !state.creating) {
      const useScram = scramAvailable() && (state.secret.password !== undefined || state.secret.clientKey);
      if (useScram) {
        state.scram = new ScramClient(state.account, state.secret);
        send("AUTHENTICATE", "SCRAM-SHA-256");
      } else if (state.secret.password !== undefined) {
        state.scram = null;
        send("AUTHENTICATE", "PLAIN");
      } else {
        loginFailed("Log in again.");
      }
    } else {
      send("CAP", "END");
    }
  } else if (sub === "NAK") {
    send("CAP", "END");
  }
}

async function handleAuthenticate(payload) {
  try {
    if (!state.scram) {
      if (payload === "+") send("AUTHENTICATE", base64.encode(`\0${state.account}\0${state.secret.password}`));
      return;
    }
    if (payload === "+" && !state.scram.started) {
      state.scram.started = true;
      send("AUTHENTICATE", base64.encode(state.scram.first()));
    } else if (!state.scram.answered) {
      state.scram.answered = true;
      send("AUTHENTICATE", base64.encode(await state.scram.final(base64.decode(payload))));
    } else {
      await state.scram.verify(base64.decode(payload));
      send("AUTHENTICATE", "+");
    }
  } catch (error) {
    send("AUTHENTICATE", "*");
    loginFailed(error.message);
  }
}

function loginFailed(reason) {
  const wasLoggedIn = state.loggedIn;
  state.wantConnection = false;
  state.loggedIn = false;
  if (state.socket) state.socket.close();
  state.socket = null;
  localStorage.removeItem(storageKey);
  showLogin(wasLoggedIn ? `You were logged out: ${reason}` : `Login failed: ${reason}`);
}

function loggedIn() {
  state.loggedIn = true;
  state.retries = 0;
  // Remember the account, and for SCRAM the derived keys: never the password.
  const remembered = { account: state.account };
  if (state.scram && state.scram.remembered) remembered.scram = state.scram.remembered;
  else if (state.secret.clientKey) remembered.scram = state.secret;
  localStorage.setItem(storageKey, JSON.stringify(remembered));
  if (remembered.scram) state.secret = remembered.scram;
  $("password").value = "";
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").textContent = state.account;
  setConnection("Connected");
  notice("");
  const people = [...state.conversations.values()].filter((c) => !c.group).map((c) => c.name);
  if (people.length) send("MONITOR", "+", people.join(","));
  const now = new Date().toISOString();
  sendTagged({ label: labelFor({ kind: "targets" }) }, "CHATHISTORY", "TARGETS", "timestamp=1970-01-01T00:00:00.000Z", `timestamp=${now}`, "50");
  // Send again what the server never confirmed; its cid makes the server answer, not repeat.
  for (const message of state.outgoing.values()) if (message.state === "sending") transmit(message);
  if (state.open) loadConversation(state.conversations.get(state.open));
  if (!$("message").matches(":focus")) $("message").focus();
}

function handleFail(message, label) {
  const [command, code] = message.params;
  const text = message.params[message.params.length - 1];
  const meaning = label && state.labels.get(label);
  if (meaning && meaning.kind === "message") {
    const mine = state.outgoing.get(meaning.cid);
    if (mine) { mine.state = "failed"; mine.reason = text; state.outgoing.delete(meaning.cid); }
  } else if (command === "REGISTER") {
    loginFailed(text);
  } else if (command === "MARKREAD" || (command === "CHATHISTORY" && code === "INVALID_TARGET")) {
    // A conversation without history yet, or a name nobody holds: nothing to show.
  } else {
    notice(text);
  }
}

function handleNote(message, label) {
  const [command, code, who, when] = message.params;
  const text = message.params[message.params.length - 1];
  if (code === "RECIPIENT_OFFLINE") {
    const conv = conversation(who);
    conv.online = false;
    conv.lastSeen = when;
    addSystem(conv, `${who} is offline (last seen ${describeTime(when)}); they get it when they come back`);
  } else if (code === "LAST_SEEN") {
    // A WHOIS answer: it updates a conversation that exists, and opens none (/seen only asks).
    const conv = state.conversations.get(fold(who));
    if (conv) { conv.online = false; conv.lastSeen = when; }
    const meaning = label && state.labels.get(label);
    if (meaning) meaning.answered = true;
    notice(`${who} was last online ${describeTime(when)}.`);
  } else if (command === "INVITE" && code === "MEMBER_OFFLINE") {
    notice(text);
  } else {
    notice(text);
  }
}

function handleBatch(message, label) {
  const ref = message.params[0] || "";
  if (ref.startsWith("+")) {
    state.batches.set(ref.slice(1), { type: message.params[1], target: message.params[2], label });
    return;
  }
  const closed = state.batches.get(ref.slice(1));
  state.batches.delete(ref.slice(1));
  if (!closed || !closed.label) return;
  const meaning = state.labels.get(closed.label);
  state.labels.delete(closed.label);
  if (meaning && meaning.kind === "history") {
    // Answers about a conversation closed meanwhile (a group just deleted) bring it back to nobody.
    const conv = state.conversations.get(fold(meaning.target));
    if (!conv) return;
    conv.loadingOlder = false;
    conv.historyLoaded = true;
    if (meaning.older && meaning.count === 0) conv.noOlder = true;
    if (meaning.latest) countUnread(conv);
  } else if (meaning && meaning.kind === "targets") {
    for (const conv of state.conversations.values()) if (!conv.historyLoaded && conv.key !== state.open) loadConversation(conv, true);
  } else if (meaning && meaning.kind === "members") {
    // members arrive as ChanServ notices inside the batch
  } else if (meaning && meaning.kind === "whois" && meaning.seen) {
    if (meaning.online) notice(`${meaning.nick} is online now.`);
    else if (!meaning.answered) notice(`${meaning.nick}: no such user`);
  }
}

function handleMessage(message, label, batch) {
  const { params, tags } = message;
  const from = nickOf(message.source);
  const target = params[0];
  let text = params[1] || "";
  const fromServer = !message.source || !message.source.includes("!");
  const meaning = label ? state.labels.get(label) : batch && batch.label ? state.labels.get(batch.label) : null;

  if (from === "ChanServ" || from === "NickServ" || fromServer) {
    // Services and the server speak to the user, not in a conversation.
    if (from === "ChanServ") parseChanServ(text);
    if (!(meaning && meaning.kind === "members")) notice(`${from || "server"}: ${text}`);
    return;
  }
  if (message.command === "NOTICE" && !target.startsWith("#")) { notice(`${from}: ${text}`); return; }
  const mine = fold(from) === fold(state.nick);
  const other = target.startsWith("#") ? target : mine ? target : from;
  const isHistory = meaning && meaning.kind === "history";
  if (isHistory && !state.conversations.has(fold(other))) return;
  const conv = conversation(other);
  if (text.startsWith("\x01ACTION ")) text = `* ${from} ${text.slice(8).replace(/\x01$/, "")}`;
  const missed = Boolean(batch && batch.type === "chathistory" && !batch.label);
  const time = tags.time || new Date().toISOString();
  const cid = tags["+parley.chat/cid"];

  if (mine && cid && state.outgoing.has(cid)) {
    // The echo of what we sent: stored by the server.
    const own = state.outgoing.get(cid);
    state.outgoing.delete(cid);
    own.msgid = tags.msgid;
    own.time = time;
    own.state = "sent";
    if (own.msgid) conv.ids.add(own.msgid);
    const early = pendingReceipts.get(own.msgid);
    if (early) { early.forEach((r) => applyReceipt(own, r)); pendingReceipts.delete(own.msgid); }
    if (conv.group && state.caps.has("parley.chat/receipts") && own.msgid) send("RECEIPTS", "STATUS", own.msgid);
    return;
  }
  const entry = insertMessage(conv, { msgid: tags.msgid, from, target, text, time, own: mine, state: mine ? "sent" : null, readers: {}, missed },
    isHistory && meaning.older ? meaning : null);
  if (isHistory) meaning.count = (meaning.count || 0) + 1;
  if (!mine && !isHistory && entry && !isOnScreen(conv) && !(conv.marker && conv.marker >= time)) conv.unread++;
  if (mine && isHistory && entry.msgid && state.caps.has("parley.chat/receipts")) meaning.ownIds = [...(meaning.ownIds || []), entry.msgid];
  if (isHistory && meaning.ownIds && meaning.ownIds.length === 1) {
    // Ask once per page for the receipts of our messages in it.
    queueMicrotask(() => { if (meaning.ownIds.length) send("RECEIPTS", "STATUS", meaning.ownIds.splice(0, 100).join(",")); });
  }
}

const pendingReceipts = new Map(); // msgid -> receipts that came before the echo

function findOwn(msgid) {
  for (const conv of state.conversations.values()) {
    const found = conv.messages.find((m) => m.msgid === msgid && m.own);
    if (found) return found;
  }
  return null;
}

function applyReceipt(message, [, , status, reader]) {
  const rank = { pending: 0, delivered: 1, read: 2 };
  const before = message.readers[reader];
  if (before === undefined || rank[status] > rank[before]) message.readers[reader] = status;
}

function handleReceipt(params) {
  const msgid = params[1];
  const own = findOwn(msgid);
  if (own) applyReceipt(own, params);
  else pendingReceipts.set(msgid, [...(pendingReceipts.get(msgid) || []), params]);
}

function handleMarkread(params) {
  const [target, marker] = params;
  if (!marker || !marker.startsWith("timestamp=")) return;
  const conv = state.conversations.get(fold(target));
  if (!conv) return;
  const time = marker.slice(10);
  if (!conv.marker || time > conv.marker) conv.marker = time;
  countUnread(conv);
}

function countUnread(conv) {
  if (isOnScreen(conv)) { conv.unread = 0; return; }
  conv.unread = conv.messages.filter((m) => !m.own && !m.system && (!conv.marker || m.time > conv.marker)).length;
}

function setPresence(nick, online) {
  const conv = state.conversations.get(fold(nick));
  if (!conv) return;
  conv.online = online;
  if (online) conv.lastSeen = null;
  else if (state.open === conv.key) whois(nick);
}

function handleJoin(message) {
  const group = message.params[0];
  const who = nickOf(message.source);
  const conv = conversation(group);
  if (fold(who) === fold(state.nick)) {
    conv.left = false;
    if (!conv.historyLoaded) loadConversation(conv, state.open !== conv.key);
  } else if (!conv.members.some((m) => fold(m.nick) === fold(who))) {
    conv.members.push({ nick: who, owner: false, online: true });
    addSystem(conv, `${who} joined`);
  }
}

function handleLeave(message) {
  const group = message.params[0];
  const leaver = message.command === "KICK" ? message.params[1] : nickOf(message.source);
  const conv = state.conversations.get(fold(group));
  if (!conv) return;
  if (fold(leaver) === fold(state.nick)) {
    const reason = message.command === "KICK" ? message.params[2] : "you left";
    addSystem(conv, `You are no longer in ${group} (${reason})`);
    conv.left = true;
  } else {
    conv.members = conv.members.filter((m) => fold(m.nick) !== fold(leaver));
    addSystem(conv, `${leaver} left`);
  }
}

function handleRename(params) {
  const [oldName, newName] = params;
  const conv = state.conversations.get(fold(oldName));
  if (!conv) return;
  state.conversations.delete(conv.key);
  conv.name = newName;
  conv.key = fold(newName);
  state.conversations.set(conv.key, conv);
  if (state.open === fold(oldName)) state.open = conv.key;
  addSystem(conv, `${oldName} is now ${newName}`);
}

function handleNames(params) {
  const conv = state.conversations.get(fold(params[2]));
  if (!conv) return;
  for (const entry of (params[3] || "").split(" ").filter(Boolean)) {
    const owner = entry.includes("~");
    const nick = nickOf(entry.replace(/^[~@+&%]+/, ""));
    const known = conv.members.find((m) => fold(m.nick) === fold(nick));
    if (known) { known.online = true; known.owner = known.owner || owner; } else conv.members.push({ nick, owner, online: true });
    if (owner) conv.owner = nick;
  }
}

// ChanServ INFO (docs/groups.md): "#team: owner alice, created ...", then
// "Members (3): ~alice, bob, dave (offline)", and for a large group more lines of
// "Members (N, continued): ...".
function parseChanServ(text) {
  let match = text.match(/^(#\S+): owner (\S+?),/);
  if (match) { const conv = state.conversations.get(fold(match[1])); if (conv) conv.owner = match[2]; lastInfoGroup = match[1]; return; }
  match = text.match(/^Members \(\d+(, continued)?\): (.*)$/);
  if (match && lastInfoGroup) {
    const conv = state.conversations.get(fold(lastInfoGroup));
    if (!conv) return;
    const listed = match[2].split(", ").map((entry) => {
      const offline = entry.endsWith(" (offline)");
      const name = entry.replace(" (offline)", "");
      const owner = name.startsWith("~");
      return { nick: name.replace(/^[~@+&%]+/, ""), owner, online: !offline };
    });
    conv.members = match[1] ? [...conv.members, ...listed] : listed;
    const owner = conv.members.find((m) => m.owner);
    if (owner) conv.owner = owner.nick;
  }
}
let lastInfoGroup = null;

// WHOIS, labeled; for /seen the whole answer (online, last seen, or nobody) ends its batch.
function whois(nick, seen = false) {
  if (state.registered) sendTagged({ label: labelFor({ kind: "whois", nick, seen }) }, "WHOIS", nick);
}

function requestMembers(group) {
  if (group && state.registered) sendTagged({ label: labelFor({ kind: "members" }) }, "PRIVMSG", "ChanServ", `INFO ${group}`);
}

// MARK: what the user does

function loadConversation(conv, background = false) {
  if (!conv || !state.registered) return;
  sendTagged({ label: labelFor({ kind: "history", target: conv.name, latest: true }) }, "CHATHISTORY", "LATEST", conv.name, "*", String(historyPage));
  send("MARKREAD", conv.name);
  if (background) return;
  if (conv.group) requestMembers(conv.name);
  else if (conv.online === false) whois(conv.name);
}

function loadOlder(conv) {
  if (!conv || conv.loadingOlder || conv.noOlder || !state.registered) return;
  const oldest = conv.messages.find((m) => m.time && !m.system);
  if (!oldest) return;
  conv.loadingOlder = true;
  // By msgid where known: messages of one millisecond share a timestamp, and a page that ended
  // among them would skip the rest of that millisecond when asked "before" it.
  const before = oldest.msgid ? `msgid=${oldest.msgid}` : `timestamp=${oldest.time}`;
  sendTagged({ label: labelFor({ kind: "history", target: conv.name, older: true, count: 0 }) }, "CHATHISTORY", "BEFORE", conv.name, before, String(historyPage));
}

function openConversation(name) {
  const conv = conversation(name);
  state.open = conv.key;
  conv.unread = 0;
  conv.showDivider = conv.messages.some((m) => m.missed);
  if (state.registered) loadConversation(conv);
  render();
  scrollToEnd();
}

function transmit(message) {
  sendTagged({ label: labelFor({ kind: "message", cid: message.cid }), "+parley.chat/cid": message.cid }, "PRIVMSG", message.target, message.text);
}

function sendMessage(target, text) {
  const conv = conversation(target);
  const cid = `${state.cidPrefix}-${Date.now().toString(36)}-${state.nextLabel}`;
  const message = { cid, from: state.nick || state.account, target: conv.name, text, time: new Date().toISOString(), own: true, state: "sending", readers: {} };
  state.outgoing.set(cid, message);
  conv.messages.push(message);
  transmit(message);
}

function addSystem(conv, text) {
  conv.messages.push({ system: true, text, time: new Date().toISOString() });
}

function notice(text) {
  $("notice").textContent = text;
}

function run(actions) {
  for (const action of actions) {
    if (action.info) notice(action.info);
    else if (action.open) openConversation(action.open);
    else if (action.send) sendMessage(action.to, action.text);
    else if (action.irc) send(...action.irc);
    else if (action.seen) whois(action.seen, true);
    else if (action.close) {
      if (state.open === fold(action.close)) state.open = null;
      state.conversations.delete(fold(action.close));
    }
  }
  render();
  scrollToEnd();
}

function markReadIfOnScreen() {
  const conv = state.open && state.conversations.get(state.open);
  if (!conv || !isOnScreen(conv) || !state.registered) return;
  conv.unread = 0;
  const latest = [...conv.messages].reverse().find((m) => m.time && !m.system && (m.msgid || !m.own));
  if (latest && (!conv.marker || latest.time > conv.marker) && !latest.own) {
    conv.marker = latest.time;
    send("MARKREAD", conv.name, `timestamp=${latest.time}`);
  }
}

// MARK: drawing

function describeTime(iso) {
  if (!iso || iso === "never") return "never";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const today = new Date().toDateString() === date.toDateString();
  return today ? `today at ${date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}` : date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function render() {
  if ($("chat").hidden) return;
  // The lists are drawn anew each time: a keyboard user's focus goes back to the same control.
  const focusKey = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.focusKey : undefined;
  markReadIfOnScreen();
  const list = $("conversations");
  const convs = [...state.conversations.values()].sort((a, b) => {
    const last = (c) => (c.messages.length ? c.messages[c.messages.length - 1].time || "" : "");
    return last(b).localeCompare(last(a)) || a.name.localeCompare(b.name);
  });
  list.replaceChildren(...convs.map((conv) => {
    const presence = conv.group ? "group" : conv.online ? "online" : conv.online === false ? "offline" : "";
    const label = [conv.name, presence, conv.unread ? `${conv.unread} unread` : ""].filter(Boolean).join(", ");
    return element("li", {}, element("button", {
      type: "button", class: "conv", "aria-label": label, "aria-current": state.open === conv.key ? "true" : "false", "data-focus-key": `conv ${conv.key}`,
      onclick: () => openConversation(conv.name),
    }, conv.group ? null : element("span", { class: `dot${conv.online ? " online" : ""}`, "aria-hidden": "true" }),
    element("span", {}, conv.name), conv.unread ? element("span", { class: "unread", "aria-hidden": "true" }, String(conv.unread)) : null));
  }));

  const conv = state.open && state.conversations.get(state.open);
  $("title").textContent = conv ? conv.name : "No conversation open";
  $("presence").textContent = !conv ? "Open a conversation from the list, or type /msg user text." : conv.group
    ? (conv.owner ? `Group owned by ${conv.owner}` : "Group")
    : conv.online ? "online" : conv.online === false ? `offline${conv.lastSeen ? `, last seen ${describeTime(conv.lastSeen)}` : ""}` : "";
  $("older").hidden = !conv || conv.noOlder || !conv.messages.some((m) => m.time && !m.system);
  renderLog(conv);
  renderGroup(conv);
  if (focusKey && document.activeElement?.dataset?.focusKey !== focusKey) {
    const again = [...document.querySelectorAll("[data-focus-key]")].find((e) => e.dataset.focusKey === focusKey);
    if (again) again.focus({ preventScroll: true });
  }
}

function renderLog(conv) {
  const log = $("log");
  const nearEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  if (!conv) { log.replaceChildren(); return; }
  const items = [];
  let dividerShown = false;
  for (const m of conv.messages) {
    if (m.system) { items.push(element("li", { class: "system" }, m.text)); continue; }
    if (m.missed && !dividerShown) { items.push(element("li", { class: "divider" }, "new since you left")); dividerShown = true; }
    const words = m.own ? stateWords(m) : null;
    const stateClass = words ? (words.startsWith("failed") ? "failed" : words === "read" ? "read" : "") : "";
    const children = [
      element("span", { class: "meta" }, element("span", { class: "from" }, m.own ? "you" : m.from), " ",
        element("time", { datetime: m.time }, clock(m.time)), m.missed ? element("span", { class: "missed-word" }, " missed") : null),
      element("div", { class: "text" }, m.text),
    ];
    if (words) children.push(element("span", { class: `state ${stateClass}` }, words));
    if (m.own && conv.group && Object.keys(m.readers).length) {
      children.push(element("details", {
        open: state.openDetails.has(m.msgid),
        ontoggle: (event) => { if (event.target.open) state.openDetails.add(m.msgid); else state.openDetails.delete(m.msgid); },
      }, element("summary", { "data-focus-key": `who ${m.msgid}` }, "who has it"),
        element("ul", {}, ...Object.entries(m.readers).sort().map(([reader, s]) => element("li", {}, `${reader}: ${s === "pending" ? "not delivered yet" : s}`)))));
    }
    items.push(element("li", { class: m.own ? "own" : "", "data-key": m.msgid || m.cid }, ...children));
  }
  log.replaceChildren(...items);
  if (conv.anchor) {
    // Older messages are being put above: the message that was at the top stays where it was,
    // through every message of the page (each is drawn as it arrives), until the page has ended;
    // once more a frame later, in case the wheel's own scroll landed after ours.
    keepAnchor(conv);
    if (!conv.loadingOlder) {
      const anchor = conv.anchor;
      conv.anchor = null;
      requestAnimationFrame(() => { if (!conv.anchor && state.open === conv.key) keepAnchor({ anchor }); });
    }
  } else if (nearEnd) {
    log.scrollTop = log.scrollHeight;
  }
}

function keepAnchor({ anchor }) {
  const log = $("log");
  const item = [...log.querySelectorAll("li[data-key]")].find((li) => li.dataset.key === anchor.key);
  if (item) log.scrollTop += item.getBoundingClientRect().top - log.getBoundingClientRect().top - anchor.offset;
}

function renderGroup(conv) {
  const panel = $("group-panel");
  panel.hidden = !conv || !conv.group;
  if (panel.hidden) return;
  const owner = conv.owner && fold(conv.owner) === fold(state.nick);
  $("members").replaceChildren(...conv.members.map((m) => element("li", {},
    `${m.nick}${m.owner ? " (owner)" : ""}${m.online ? "" : " (offline)"}`,
    owner && !m.owner ? element("button", { type: "button", "aria-label": `Remove ${m.nick}`, "data-focus-key": `remove ${fold(m.nick)}`, onclick: () => { send("KICK", conv.name, m.nick, "Removed from the group"); requestMembers(conv.name); } }, "Remove") : null)));
  $("owner-tools").hidden = !owner;
}

function scrollToEnd() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

// MARK: the page

function showLogin(message) {
  $("chat").hidden = true;
  $("login").hidden = false;
  $("login-status").textContent = message || "";
  $("account").value = state.account || $("account").value;
  (state.account ? $("password") : $("account")).focus();
}

function start(creating) {
  const account = $("account").value.trim();
  const password = $("password").value;
  if (!account || !password) { $("login-status").textContent = "Enter your account and password."; return; }
  state.account = account;
  state.secret = { password };
  state.creating = creating;
  state.loggedIn = false;
  state.retries = 0;
  $("login-status").textContent = creating ? "Creating the account…" : "Logging in…";
  if (state.socket) { state.wantConnection = false; state.socket.close(); }
  connect();
}

$("login-form").addEventListener("submit", (event) => { event.preventDefault(); start(false); });
$("create-account").addEventListener("click", () => start(true));
$("log-out").addEventListener("click", () => {
  localStorage.removeItem(storageKey);
  state.wantConnection = false;
  clearTimeout(state.retryTimer);
  if (state.socket) { send("QUIT", "Logged out"); state.socket.close(); }
  state.socket = null;
  state.loggedIn = false;
  state.conversations.clear();
  state.outgoing.clear();
  state.open = null;
  showLogin("You logged out.");
});
$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("message");
  const conv = state.open && state.conversations.get(state.open);
  const actions = interpret(input.value, conv ? conv.name : null);
  input.value = "";
  run(actions);
});
$("open-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("open-name").value.trim();
  if (!name) return;
  $("open-name").value = "";
  openConversation(name);
  $("message").focus();
});
// Older history, keeping the reader's place: the message at the top of the log is the anchor.
function loadOlderKeepingPlace(conv) {
  if (!conv || conv.loadingOlder || conv.noOlder) return;
  const log = $("log");
  const first = log.querySelector("li[data-key]");
  conv.anchor = first ? { key: first.dataset.key, offset: first.getBoundingClientRect().top - log.getBoundingClientRect().top } : null;
  loadOlder(conv);
}
$("older").addEventListener("click", () => loadOlderKeepingPlace(state.conversations.get(state.open)));
// Only the reader's own scrolling loads more: drawing the log (a conversation opened, a page of
// history put above) moves it too, and must not start a load by itself.
let readerScrolledAt = 0;
for (const kind of ["wheel", "touchmove", "keydown", "pointerdown"]) {
  $("log").addEventListener(kind, () => { readerScrolledAt = performance.now(); }, { passive: true });
}
$("log").addEventListener("scroll", () => {
  const log = $("log");
  if (log.scrollTop === 0 && log.scrollHeight > log.clientHeight && performance.now() - readerScrolledAt < 1000) {
    loadOlderKeepingPlace(state.open && state.conversations.get(state.open));
  }
});
$("add-member").addEventListener("click", () => {
  const conv = state.conversations.get(state.open);
  const name = $("member-name").value.trim();
  if (conv && name) { send("INVITE", name, conv.name); $("member-name").value = ""; }
});
$("rename-group").addEventListener("click", () => {
  const conv = state.conversations.get(state.open);
  const name = $("new-name").value.trim();
  if (conv && name) { send("RENAME", conv.name, groupName(name), "Renamed"); $("new-name").value = ""; }
});
$("delete-group").addEventListener("click", () => {
  const conv = state.conversations.get(state.open);
  if (conv && confirm(`Delete ${conv.name} and its messages for everyone?`)) run([{ irc: ["PRIVMSG", "ChanServ", `DROP ${conv.name}`] }, { close: conv.name }]);
});
window.addEventListener("focus", render);
// Leaving the page ends the session at once (the server then counts the user offline); a page
// brought back from the browser's cache logs in again.
window.addEventListener("pagehide", () => {
  if (!state.socket) return;
  state.wantConnection = false;
  state.socket.close();
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted && state.loggedIn && !state.socket) connect();
});
document.addEventListener("visibilitychange", render);

// A remembered login: reconnect at once with the SCRAM keys (no password kept).
try {
  const remembered = JSON.parse(localStorage.getItem(storageKey) || "null");
  if (remembered && remembered.account) {
    state.account = remembered.account;
    $("account").value = remembered.account;
    if (remembered.scram && scramAvailable()) {
      state.secret = remembered.scram;
      $("login-status").textContent = "Logging in…";
      connect();
    } else {
      $("password").focus();
    }
  } else {
    $("account").focus();
  }
} catch {
  localStorage.removeItem(storageKey);
}

// For the browser tests and the curious: the client's state, read-only by convention.
window.parley = state;
