// The Message box's commands: the terminal client's (see `parley`'s /help), so that what a user
// learnt in one client works in the other. Turns a typed line into actions for app.js.

export const help = [
  "/msg user text: a direct message (opens the conversation)",
  "/query user or /query #group: open that conversation",
  "/join #group: join an open group, or create a new one",
  "/part [#group]: leave the group",
  "/group create NAME [users...]: create a group with members",
  "/group add NAME user, /group remove NAME user: manage members (owner)",
  "/group rename OLD NEW, /group delete NAME: rename or delete (owner)",
  "/group members NAME: the owner and members, online or not",
  "/seen user: online now, or when last seen",
  "/receipts off, /receipts on: whether others see when you read their messages",
  "/help: this list",
];

export const groupName = (name) => (name.startsWith("#") ? name : `#${name}`);

/**
 * `current` is the open conversation (or null). Returns a list of actions:
 * { send, to, text } | { open } | { irc: [command, ...params] } | { seen } | { info } | { close }
 */
export function interpret(line, current) {
  const text = line.trim();
  if (!text) return [];
  if (!text.startsWith("/") || text.startsWith("//")) {
    const body = text.startsWith("//") ? text.slice(1) : line;
    if (!current) return [{ info: "Who is this for? Use /msg user text, /query user or /join #group. /help lists everything." }];
    return [{ send: true, to: current, text: body }];
  }
  const words = text.split(/\s+/);
  const command = words[0].toLowerCase();
  const rest = words.slice(1);
  const after = (n) => text.split(/\s+/).slice(n).join(" ");
  switch (command) {
    case "/msg": {
      if (rest.length < 2) return [{ info: "Usage: /msg user text" }];
      const to = rest[0];
      return [{ open: to }, { send: true, to, text: text.replace(/^\S+\s+\S+\s+/, "") }];
    }
    case "/query":
      if (!rest.length) return [{ info: "Usage: /query user or /query #group" }];
      return [{ open: rest[0] }];
    case "/join":
      if (!rest.length) return [{ info: "Usage: /join #group" }];
      return [{ irc: ["JOIN", groupName(rest[0])] }, { open: groupName(rest[0]) }];
    case "/part": {
      const group = rest.length ? groupName(rest[0]) : current && current.startsWith("#") ? current : null;
      if (!group) return [{ info: "Usage: /part #group" }];
      return [{ irc: ["PART", group] }, { close: group }];
    }
    case "/group": {
      const usage = { info: "Usage: /group create NAME [users...] | add NAME user | remove NAME user | rename OLD NEW | members NAME | delete NAME" };
      if (rest.length < 2) return [usage];
      const sub = rest[0].toLowerCase();
      const group = groupName(rest[1]);
      const users = rest.slice(2);
      switch (sub) {
        case "create":
          return [{ irc: ["JOIN", group] }, ...users.map((u) => ({ irc: ["INVITE", u, group] })), { open: group }];
        case "add":
          if (!users.length) return [usage];
          return users.map((u) => ({ irc: ["INVITE", u, group] }));
        case "remove":
          if (!users.length) return [usage];
          return users.map((u) => ({ irc: ["KICK", group, u, "Removed from the group"] }));
        case "rename":
          if (!users.length) return [usage];
          return [{ irc: ["RENAME", group, groupName(users[0]), "Renamed"] }];
        case "members":
          return [{ irc: ["PRIVMSG", "ChanServ", `INFO ${group}`] }];
        case "delete":
          return [{ irc: ["PRIVMSG", "ChanServ", `DROP ${group}`] }, { close: group }];
        default:
          return [usage];
      }
    }
    case "/seen":
      if (!rest.length) return [{ info: "Usage: /seen user" }];
      return [{ seen: rest[0] }];
    case "/receipts":
      switch ((rest[0] || "").toLowerCase()) {
        case "on": return [{ irc: ["RECEIPTS", "READ", "ON"] }];
        case "off": return [{ irc: ["RECEIPTS", "READ", "OFF"] }];
        case "": return [{ irc: ["RECEIPTS", "READ"] }];
        default: return [{ info: "Usage: /receipts on or /receipts off" }];
      }
    case "/help":
      return [{ info: help.join("\n") }];
    case "/me":
      if (!current) return [{ info: "Open a conversation first." }];
      return [{ send: true, to: current, text: `\x01ACTION ${after(1)}\x01` }];
    default:
      return [{ info: `Unknown command ${words[0]}. /help lists the commands.` }];
  }
}
