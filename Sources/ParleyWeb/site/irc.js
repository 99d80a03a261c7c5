// The IRC wire format as the web client needs it: one line per WebSocket frame, IRCv3 tags.

const tagEscapes = { ":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n" };

function unescapeTag(value) {
  return value.replace(/\\(.?)/g, (_, c) => (c in tagEscapes ? tagEscapes[c] : c));
}

function escapeTag(value) {
  return String(value).replace(/[\\; \r\n]/g, (c) => ({ "\\": "\\\\", ";": "\\:", " ": "\\s", "\r": "\\r", "\n": "\\n" })[c]);
}

/** Parses one line into { tags, source, command, params }. */
export function parse(line) {
  const message = { tags: {}, source: null, command: "", params: [] };
  let rest = line.replace(/[\r\n]+$/, "");
  if (rest.startsWith("@")) {
    const space = rest.indexOf(" ");
    for (const tag of rest.slice(1, space).split(";")) {
      if (!tag) continue;
      const eq = tag.indexOf("=");
      if (eq < 0) message.tags[tag] = "";
      else message.tags[tag.slice(0, eq)] = unescapeTag(tag.slice(eq + 1));
    }
    rest = rest.slice(space + 1).replace(/^ +/, "");
  }
  if (rest.startsWith(":")) {
    const space = rest.indexOf(" ");
    message.source = rest.slice(1, space);
    rest = rest.slice(space + 1).replace(/^ +/, "");
  }
  while (rest.length) {
    if (rest.startsWith(":")) {
      message.params.push(rest.slice(1));
      break;
    }
    const space = rest.indexOf(" ");
    if (space < 0) {
      message.params.push(rest);
      break;
    }
    message.params.push(rest.slice(0, space));
    rest = rest.slice(space + 1).replace(/^ +/, "");
  }
  message.command = (message.params.shift() || "").toUpperCase();
  return message;
}

/** One line (without CR LF); the last parameter is made trailing when it needs to be. */
export function serialize(command, params = [], tags = {}) {
  let line = "";
  const tagText = Object.entries(tags).map(([k, v]) => (v === "" || v == null ? k : `${k}=${escapeTag(v)}`)).join(";");
  if (tagText) line += `@${tagText} `;
  line += command;
  params.forEach((param, index) => {
    const text = String(param).replace(/[\r\n\0]/g, " ");
    const last = index === params.length - 1;
    if (last && (text === "" || text.includes(" ") || text.startsWith(":"))) line += ` :${text}`;
    else line += ` ${text}`;
  });
  return line;
}

/** The nick of a `nick!user@host` source. */
export function nickOf(source) {
  return source ? source.split("!")[0] : "";
}

/** IRC case mapping (rfc1459), for comparing nicks and group names. */
export function fold(name) {
  return String(name).toLowerCase().replace(/\[/g, "{").replace(/\]/g, "}").replace(/\\/g, "|").replace(/~/g, "^");
}
