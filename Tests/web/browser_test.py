#!/usr/bin/env python3
"""The web client in a real headless Chromium, driven over the DevTools protocol, against a real
parley-server (the debug build) on loopback, with a raw IRC client on TCP as the other person.

    swift build && python3 Tests/web/browser_test.py [--server PATH] [--screenshot docs/web-client.png]

Needs Debian's `chromium` and Python's `websockets` (both installed by .ci/run). Every wait is on
a condition (a DOM state, an IRC line), with a deadline; nothing sleeps a fixed time.
"""
import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEADLINE = 15.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """parley-server on fixed loopback ports (so a restart keeps them) and its data directory."""

    def __init__(self, binary, directory):
        self.binary, self.directory = binary, directory
        self.irc_port, self.web_port = free_port(), free_port()
        self.process = None

    def start(self):
        self.log = open(os.path.join(self.directory, "server.log"), "a")
        self.process = subprocess.Popen(
            [self.binary, "--data-dir", os.path.join(self.directory, "data"), "--log-level", "info",
             "--listen", f"127.0.0.1:{self.irc_port}", "--listen", f"http://127.0.0.1:{self.web_port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.web_port), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.irc_port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("parley-server exited; see server.log")
                time.sleep(0.05)
        raise RuntimeError("parley-server did not listen")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        self.process = None


class IRC:
    """A raw IRC client on TCP: sends lines, waits for the line it expects."""

    def __init__(self, port):
        self.port = port
        self.lines = []

    async def connect(self, nick, password, create=False):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        caps = "draft/account-registration echo-message server-time message-tags parley.chat/receipts draft/read-marker batch"
        if not create:
            caps += " sasl"
        self.send("CAP LS 302")
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :{nick}")
        self.send(f"CAP REQ :{caps}")
        await self.expect(lambda l: " ACK " in l)
        if not create:
            self.send("AUTHENTICATE PLAIN")
            await self.expect(lambda l: l.startswith("AUTHENTICATE +"))
            self.send("AUTHENTICATE " + base64.b64encode(f"\0{nick}\0{password}".encode()).decode())
            await self.expect(lambda l: " 903 " in l)
        self.send("CAP END")
        await self.expect(lambda l: " 001 " in l)
        if create:
            self.send(f"REGISTER * * {password}")
            await self.expect(lambda l: "REGISTER SUCCESS" in l)

    def send(self, line):
        self.writer.write((line + "\r\n").encode())

    async def expect(self, predicate, what="a line"):
        """Takes the first line (kept or new) satisfying predicate."""
        deadline = time.monotonic() + DEADLINE
        while True:
            for index, line in enumerate(self.lines):
                if predicate(line):
                    return self.lines.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"IRC: no {what}; got {self.lines[-15:]}")
            try:
                raw = await asyncio.wait_for(self.reader.readline(), remaining)
            except asyncio.TimeoutError:
                continue
            if not raw:
                raise AssertionError(f"IRC: connection closed waiting for {what}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("PING") or " PING " in line.split(" :")[0]:
                self.send("PONG " + line.split("PING", 1)[1].strip())
            self.lines.append(line)

    async def barrier(self):
        """A PING/PONG round trip: the server has handled every earlier line."""
        token = f"b{time.monotonic_ns()}"
        self.send(f"PING {token}")
        await self.expect(lambda l: "PONG" in l and token in l, "PONG")

    async def close(self):
        self.send("QUIT :bye")
        await self.writer.drain()
        self.writer.close()


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, directory):
        self.directory = directory
        binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if not binary:
            raise SystemExit("chromium is not installed (apt-get install chromium)")
        profile = os.path.join(directory, "profile")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-smooth-scrolling", "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1000,700", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "chromium.log"), "w"))
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        self.port = int(open(port_file).read().split("\n")[0])
        self.next_id = 0
        self.events = []
        self.dialogs = []

    async def open(self):
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list"))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=64 << 20)
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        # A person looking at the window: the page has focus (headless windows otherwise do not).
        await self.call("Emulation.setFocusEmulationEnabled", enabled=True)

    async def call(self, method, **params):
        self.next_id += 1
        ident = self.next_id
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), DEADLINE))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                raise AssertionError(f"the page threw: {details.get('exception', {}).get('description', details)}")
            if message.get("method") == "Page.javascriptDialogOpening":
                # A person answering "OK" to a confirmation (the page waits for the answer).
                self.dialogs.append(message["params"]["message"])
                self.next_id += 1
                await self.ws.send(json.dumps({"id": self.next_id, "method": "Page.handleJavaScriptDialog", "params": {"accept": True}}))
                continue
            self.events.append(message)

    async def js(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait(self, expression, what):
        deadline = time.monotonic() + DEADLINE
        while True:
            value = await self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = await self.js("document.body.innerText")
                raise AssertionError(f"browser: {what} did not happen. The page says:\n{text}")
            await asyncio.sleep(0.05)  # polling a condition; the deadline above ends it

    async def navigate(self, url):
        await self.call("Page.navigate", url=url)
        await self.wait("document.readyState === 'complete' && !!window.parley", "the page loading")

    async def reload(self):
        await self.js("window.parley = undefined")
        await self.call("Page.reload", ignoreCache=False)
        await self.wait("document.readyState === 'complete' && !!window.parley", "the page reloading")

    async def fill(self, label, text):
        """Types into the field with this label (found as a person finds it: by its label)."""
        await self.js(f"""(() => {{
            const label = [...document.querySelectorAll('label')].find(l => l.textContent.trim() === {json.dumps(label)} && l.offsetParent !== null);
            const field = document.getElementById(label.htmlFor);
            field.focus(); field.value = '';
        }})()""")
        await self.call("Input.insertText", text=text)

    async def press_enter(self):
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                            **({"text": "\r"} if kind == "keyDown" else {}))

    async def click(self, name):
        """Clicks the visible button whose accessible name (text or aria-label) is `name`, once
        there is one (as a person waits for the button to appear)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            found = await self.js(f"""(() => {{
                const button = [...document.querySelectorAll('button')].find(b => b.offsetParent !== null &&
                    ((b.getAttribute('aria-label') || b.textContent).trim() === {json.dumps(name)}));
                if (!button) return false;
                button.click(); return true;
            }})()""")
            if found or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # polling a condition; the deadline above ends it
        if not found:
            names = await self.js("[...document.querySelectorAll('button')].map(b => (b.getAttribute('aria-label') || b.textContent).trim()).join(' | ')")
            raise AssertionError(f"no button named {name!r}; buttons: {names}")

    async def click_starting(self, prefix):
        """Clicks the visible button whose accessible name starts with `prefix`, once there is one."""
        deadline = time.monotonic() + DEADLINE
        while True:
            found = await self.js(f"""(() => {{
                const button = [...document.querySelectorAll('button')].find(b => b.offsetParent !== null &&
                    (b.getAttribute('aria-label') || b.textContent).trim().startsWith({json.dumps(prefix)}));
                if (!button) return false;
                button.click(); return true;
            }})()""")
            if found or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # polling a condition; the deadline above ends it
        if not found:
            raise AssertionError(f"no button named {prefix}...")

    async def press(self, key, code, key_code, shift=False):
        """One key press, as the keyboard sends it (Tab, Enter, ...)."""
        modifiers = 8 if shift else 0
        text = {"Enter": "\r"}.get(key)
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=key_code, modifiers=modifiers,
                            **({"text": text} if text and kind == "keyDown" else {}))

    async def scroll_up(self, element_id):
        """One turn of the mouse wheel over an element, just far enough to reach its top."""
        element = f"document.getElementById({json.dumps(element_id)})"
        x, y, top = await self.js(f"(() => {{ const r = {element}.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2, {element}.scrollTop]; }})()")
        await self.call("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0, deltaY=-(top + 10))

    async def type_message(self, text):
        await self.fill("Message", text)
        await self.press_enter()

    def log_has(self, text, extra="true"):
        """JS: a message in the open conversation's log contains text (and satisfies extra, on `li`)."""
        return f"[...document.querySelectorAll('[role=log] li')].some(li => li.innerText.includes({json.dumps(text)}) && ({extra}))"

    def state_of(self, text):
        return f"([...document.querySelectorAll('[role=log] li')].reverse().find(li => li.innerText.includes({json.dumps(text)}))?.querySelector('.state')?.textContent || '')"

    async def screenshot(self, path, width, height):
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = await self.call("Page.captureScreenshot", format="png")
        with open(path, "wb") as f:
            f.write(base64.b64decode(data["data"]))

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=10)


async def scenario(server, browser, screenshot):
    results = []

    def passed(name):
        results.append(name)
        print(f"ok - {name}", flush=True)

    url = f"http://127.0.0.1:{server.web_port}/"
    await browser.open()
    await browser.navigate(url)

    # Accessible names: the fields and buttons a person looks for.
    assert await browser.js("document.querySelector('label[for=account]').textContent === 'Account'")
    assert await browser.js("document.querySelector('label[for=password]').textContent === 'Password'")
    assert await browser.js("!![...document.querySelectorAll('button')].find(b => b.textContent === 'Log in')")
    stops = [s["name"] for s in await tab_through(browser)]
    if "input:account" in stops:  # a cycle: read it from the first field
        stops = stops[stops.index("input:account"):] + stops[:stops.index("input:account")]
    assert stops == ["input:account", "input:password", "button:log-in", "button:create-account"], f"the login form's Tab order: {stops}"
    await assert_fits_320(browser)
    passed("the login form has Account, Password, Log in and Create account, in Tab order, at 320 px too")

    bob = IRC(server.irc_port)
    await bob.connect("bob", "bob-password-1", create=True)

    # A wrong password is refused with a reason.
    await browser.fill("Account", "bob")
    await browser.fill("Password", "not-his-password")
    await browser.press("Enter", "Enter", 13)
    await browser.wait("document.getElementById('login-status').textContent.startsWith('Login failed')", "a refused login")
    passed("a wrong password (sent with Enter) is refused on the login form")

    await browser.fill("Account", "alice")
    await browser.fill("Password", "alice-password-1")
    await browser.click("Create account")
    await browser.wait("!document.getElementById('chat').hidden && window.parley.loggedIn", "logging in with a new account")
    assert await browser.js("!!document.querySelector('[role=log]')")
    assert await browser.js("localStorage.getItem('parley.login').indexOf('alice-password-1') < 0"), "the password is never stored"
    passed("create an account in the browser")

    # Alice to bob, with its state in words.
    await browser.type_message("/msg bob hello bob")
    line = await bob.expect(lambda l: "PRIVMSG bob :hello bob" in l, "alice's message")
    assert line.split(" ")[1].startswith(":alice!") or ":alice!" in line
    await browser.wait(f"{browser.state_of('hello bob')} === 'delivered'", "the delivered state")
    msgid = [t for t in line[1:].split(" ")[0].split(";") if t.startswith("msgid=")][0][6:]
    time_tag = [t for t in line[1:].split(" ")[0].split(";") if t.startswith("time=")][0][5:]
    bob.send(f"MARKREAD alice timestamp={time_tag}")
    await browser.wait(f"{browser.state_of('hello bob')} === 'read'", "the read state")
    passed("a DM from the browser reaches a TCP client; sent, delivered, read")

    bob.send("PRIVMSG alice :hi alice, from a terminal")
    await browser.wait(browser.log_has("hi alice, from a terminal", "li.innerText.includes('bob')"), "bob's message in the log")
    # On screen with focus: marked read (MARKREAD), so bob's client learns alice read it.
    await bob.expect(lambda l: "RECEIPT alice " in l and " read alice " in l, "the read receipt for bob's message")
    passed("a DM from a TCP client appears with its sender")

    # Bob goes offline: presence, and the offline note with last seen.
    await bob.close()
    await browser.wait("document.getElementById('presence').textContent.startsWith('offline')", "bob shown offline")
    await browser.type_message("are you there?")
    await browser.wait(browser.log_has("bob is offline (last seen"), "the offline note with last seen")
    await browser.wait("document.getElementById('presence').textContent.includes('last seen')", "last seen in the header")
    passed("a message to someone offline says so, with last seen")

    # A group, created with a member, and talk in it.
    await browser.type_message("/group create friends bob")
    await browser.wait("document.getElementById('title').textContent === '#friends'", "the group open")
    await browser.type_message("welcome to our group")
    await browser.wait(f"{browser.state_of('welcome to our group')}.length > 0 && {browser.state_of('welcome to our group')} !== 'sending'", "the group message stored")
    bob = IRC(server.irc_port)
    await bob.connect("bob", "bob-password-1")
    await bob.expect(lambda l: "PRIVMSG #friends :welcome to our group" in l, "the group message, replayed")
    await bob.expect(lambda l: "PRIVMSG bob :are you there?" in l, "the DM, replayed")
    await browser.wait(f"{browser.state_of('welcome to our group')} === 'delivered'", "the group message delivered to bob")
    bob.send("PRIVMSG #friends :thanks for the group")
    await browser.wait(browser.log_has("thanks for the group", "li.innerText.includes('bob')"), "bob's group message")
    await browser.wait("[...document.querySelectorAll('#members li')].some(li => li.textContent.includes('alice (owner)'))", "the owner marked in the members")
    await browser.wait("!!document.querySelector('button[aria-label=\"Remove bob\"]')", "owner tools")
    passed("create a group with a member, talk in it, members with the owner marked")

    # Unread counts: bob writes to alice while she reads the group.
    bob.send("PRIVMSG alice :while you were in the group")
    await browser.wait("[...document.querySelectorAll('#conversations button')].some(b => b.getAttribute('aria-label') === 'bob, online, 1 unread')", "an unread count on bob")
    passed("unread counts and presence in the conversation list")

    # A reload keeps the session (no password asked) and shows the history.
    await browser.reload()
    await browser.wait("window.parley.loggedIn", "logging in again after the reload")
    await browser.wait("document.querySelectorAll('#conversations button').length >= 2", "the conversations listed again")
    await browser.click("bob, online, 1 unread")
    await browser.wait(browser.log_has("hello bob") + " && " + browser.log_has("while you were in the group"), "the history after the reload")
    await browser.wait(f"{browser.state_of('hello bob')} === 'read'", "the read state from history")
    passed("a reload logs in again without the password and shows the history")

    # Messages that arrive while the page is closed are marked missed when it comes back.
    bob.send("MONITOR + alice")
    await bob.expect(lambda l: " 730 " in l, "alice online")
    await browser.call("Page.navigate", url="about:blank")
    await bob.expect(lambda l: " 731 " in l, "alice offline")
    bob.send("PRIVMSG alice :sent while your browser was closed")
    await bob.barrier()
    await browser.navigate(url)
    await browser.wait("window.parley.loggedIn", "logging in when the page opens again")
    await browser.wait("[...document.querySelectorAll('#conversations button')].some(b => b.getAttribute('aria-label') === 'bob, online, 1 unread')", "the missed message counted unread")
    await browser.click("bob, online, 1 unread")
    await browser.wait(browser.log_has("sent while your browser was closed", "li.querySelector('.missed-word')"), "the message marked missed")
    await browser.wait(browser.log_has("new since you left", "li.classList.contains('divider')"), "the divider before missed messages")
    passed("messages missed while away are marked")

    # A server restart: the page reconnects; a message typed meanwhile is sent once.
    await bob.close()
    server.stop()
    await browser.wait("!window.parley.registered", "the page noticing the restart")
    await browser.type_message("sent while the server was down")
    assert await browser.js(f"{browser.state_of('sent while the server was down')} === 'sending'")
    server.start()
    bob = IRC(server.irc_port)
    await bob.connect("bob", "bob-password-1")
    await browser.wait("window.parley.registered && window.parley.loggedIn", "reconnecting after the restart")
    await bob.expect(lambda l: "PRIVMSG bob :sent while the server was down" in l, "the message sent after reconnecting")
    await browser.wait(f"{browser.state_of('sent while the server was down')} === 'delivered'", "its delivered state")
    await bob.barrier()
    assert not any("sent while the server was down" in l for l in bob.lines), "delivered twice"
    passed("reconnect after a server restart; what was typed meanwhile is sent once")

    # Group management by the owner, with the page's own controls.
    carol = IRC(server.irc_port)
    await carol.connect("carol", "carol-password-1", create=True)
    await browser.click_starting("#friends")
    await browser.wait("document.getElementById('title').textContent === '#friends'", "the group open")
    await browser.wait(members_have("bob"), "bob in the members")
    await browser.fill("Member", "carol")
    await browser.click("Add member")
    await carol.expect(lambda l: " JOIN " in l and "#friends" in l, "carol joined to the group")
    await browser.wait(members_have("carol"), "carol in the members")
    await browser.click("Remove bob")
    await bob.expect(lambda l: " KICK #friends bob " in l, "bob removed")
    await browser.wait("!" + members_have("bob"), "bob gone from the members")
    await browser.fill("New name", "pals")
    await browser.click("Rename group")
    await carol.expect(lambda l: " JOIN " in l and "#pals" in l, "carol in the renamed group")
    await browser.wait("document.getElementById('title').textContent === '#pals'", "the renamed group open")
    await browser.wait(f"{conversation_names()}.includes('#pals') && !{conversation_names()}.includes('#friends')", "the list renamed")
    await browser.type_message("/group create doomed carol")
    await browser.wait("document.getElementById('title').textContent === '#doomed'", "the new group open")
    await carol.expect(lambda l: " JOIN " in l and "#doomed" in l, "carol in the new group")
    await browser.wait(members_have("carol"), "carol in the new group's members")
    await browser.click("Delete group")
    await carol.expect(lambda l: " KICK #doomed carol " in l, "the group deleted")
    assert browser.dialogs and "#doomed" in browser.dialogs[-1], "deleting asks first"
    await browser.wait(f"!{conversation_names()}.includes('#doomed') && document.getElementById('title').textContent !== '#doomed'", "the deleted group gone")
    passed("the owner adds, removes, renames and deletes a group with the page's controls")

    # /seen: online now, no such user, or when last seen.
    await browser.type_message("/seen carol")
    await browser.wait("document.getElementById('notice').textContent === 'carol is online now.'", "carol seen online")
    await browser.type_message("/seen nobody-here")
    await browser.wait("document.getElementById('notice').textContent.includes('nobody-here: no such user')", "an unknown user")
    assert not await browser.js(f"{conversation_names()}.includes('nobody-here')"), "asking does not open a conversation"

    # Older messages load when scrolling up: more than one page of history.
    for n in range(1, 61):
        carol.send(f"PRIVMSG alice :page h{n:02d}")
    await carol.barrier()
    await browser.reload()
    await browser.wait("window.parley.loggedIn", "logging in again after the reload")
    await browser.wait("[...document.querySelectorAll('#conversations button')].some(b => b.getAttribute('aria-label').startsWith('carol'))", "carol listed")
    await browser.click_starting("carol")
    await browser.wait(browser.log_has("page h60") + " && " + browser.log_has("page h11"), "the latest page of history")
    await browser.wait("window.parley.conversations.get('carol').historyLoaded", "the first page complete")
    assert not await browser.js(browser.log_has("page h10")), "only one page at first"
    await browser.scroll_up("log")
    await browser.wait(browser.log_has("page h01"), "older messages after scrolling up")
    try:
        await browser.wait("document.getElementById('log').scrollTop > 0", "the message being read kept in place")
    except AssertionError:
        print(await browser.js("""JSON.stringify((() => { const log = document.getElementById('log'); const c = window.parley.conversations.get('carol');
            return { top: log.scrollTop, height: log.scrollHeight, client: log.clientHeight, loading: c.loadingOlder, noOlder: c.noOlder,
              anchor: c.anchor, order: c.messages.slice(0, 15).map(m => m.text + '@' + m.time) }; })())"""))
        raise
    passed("older messages load when scrolling up")

    await carol.close()
    await browser.click_starting("bob")
    await browser.wait("window.parley.conversations.get('carol').online === false", "carol offline")
    await browser.type_message("/seen carol")
    await browser.wait("document.getElementById('notice').textContent.startsWith('carol was last online')", "carol's last seen")
    passed("/seen says online now, when last seen, or no such user")

    # /receipts off: reading no longer tells the author; on: it does again.
    await browser.type_message("/receipts off")
    await browser.wait("document.getElementById('notice').textContent === 'Authors never see when you read their messages'", "receipts off confirmed")
    bob.send("PRIVMSG alice :do you read this?")
    echo = await bob.expect(lambda l: "PRIVMSG alice :do you read this?" in l, "bob's echo")
    first = tag(echo, "msgid")
    await browser.wait(browser.log_has("do you read this?"), "bob's message on screen")
    await browser.wait(f"window.parley.conversations.get('bob').marker >= {json.dumps(tag(echo, 'time'))}", "the server marking it read")
    await bob.barrier()
    assert not any(f"RECEIPT alice {first} read" in l for l in bob.lines), "a read receipt with receipts off"
    await browser.type_message("/receipts on")
    await browser.wait("document.getElementById('notice').textContent === 'Authors see when you read their messages'", "receipts on confirmed")
    bob.send("PRIVMSG alice :and this one?")
    second = tag(await bob.expect(lambda l: "PRIVMSG alice :and this one?" in l, "bob's echo"), "msgid")
    await bob.expect(lambda l: f"RECEIPT alice {second} read" in l, "the read receipt with receipts on")
    passed("/receipts off and on")

    # Keyboard only: Tab reaches every control, focus is visible, Enter opens and sends.
    await browser.click_starting("#pals")
    await browser.wait("!document.getElementById('owner-tools').hidden", "the owner's tools")
    stops = await tab_through(browser)
    controls = await browser.js(f"[...document.querySelectorAll('button, input, summary, [tabindex]')].filter(e => e.offsetParent !== null && !e.disabled).map({DESCRIBE})")
    missing = [c for c in controls if c not in [s["name"] for s in stops]]
    assert not missing, f"Tab never reaches {missing}; it goes {[s['name'] for s in stops]}"
    unmarked = [s["name"] for s in stops if not s["outlined"]]
    assert not unmarked, f"no visible focus on {unmarked}"
    await tab_to(browser, "button:bob, online")
    await browser.press("Enter", "Enter", 13)
    await browser.wait("document.getElementById('title').textContent === 'bob'", "bob opened from the keyboard")
    await tab_to(browser, "input:message")
    await browser.call("Input.insertText", text="typed without a mouse")
    await browser.press("Enter", "Enter", 13)
    await bob.expect(lambda l: "PRIVMSG bob :typed without a mouse" in l, "the message sent with Enter")
    passed("keyboard only: Tab reaches every control with visible focus, Enter opens and sends")

    # Readable at 320 px: nothing wider than the screen, a group with the owner's tools included.
    await browser.click_starting("#pals")
    await assert_fits_320(browser)
    passed("fits a 320 px wide screen, with a group and the owner's tools")

    if screenshot:
        await browser.click("bob, online")
        await browser.wait(browser.log_has("hello bob"), "the conversation for the screenshot")
        await browser.screenshot(screenshot, 900, 560)
        print(f"screenshot: {screenshot}")

    # A member (not the owner) sees the members with the owner marked, and no owner's tools.
    await browser.click("Log out")
    await browser.wait("!document.getElementById('login').hidden", "the login form after logging out")
    await browser.fill("Account", "carol")
    await browser.fill("Password", "carol-password-1")
    await browser.click("Log in")
    await browser.wait("window.parley.loggedIn", "carol logged in")
    await browser.wait(f"{conversation_names()}.includes('#pals')", "carol's group listed")
    await browser.click_starting("#pals")
    await browser.wait(members_have("alice (owner)") + " && " + members_have("carol"), "the members with the owner marked")
    assert not await browser.js("[...document.querySelectorAll('#members button')].length"), "no Remove buttons for a member"
    assert await browser.js("document.getElementById('owner-tools').hidden"), "no owner's tools for a member"
    passed("a member sees the members with the owner marked, and no owner's tools")
    await bob.close()
    return results


DESCRIBE = "e => e.tagName.toLowerCase() + ':' + (e.getAttribute('aria-label') || e.id || e.textContent.trim())"


def members_have(text):
    """JS: an entry of the group's member list starts with text."""
    return f"[...document.querySelectorAll('#members li')].some(li => li.textContent.startsWith({json.dumps(text)}))"


def conversation_names():
    return "[...document.querySelectorAll('#conversations button')].map(b => b.getAttribute('aria-label').split(',')[0])"


def tag(line, key):
    return [t for t in line[1:].split(" ")[0].split(";") if t.startswith(key + "=")][0][len(key) + 1:]


async def assert_fits_320(browser):
    """At 320 px wide: no horizontal scroll, and nothing drawn past either edge."""
    await browser.call("Emulation.setDeviceMetricsOverride", width=320, height=640, deviceScaleFactor=1, mobile=True)
    await browser.wait("document.documentElement.scrollWidth <= 320", "a 320 px wide layout")
    overflowing = await browser.js("""[...document.querySelectorAll('body *')].filter(e => e.offsetParent !== null)
        .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && (r.left < -1 || r.right > 321); })
        .map(e => e.id || e.tagName + '.' + e.className)""")
    await browser.call("Emulation.clearDeviceMetricsOverride")
    assert not overflowing, f"wider than 320 px: {overflowing}"


async def focused(browser):
    return await browser.js(f"""(() => {{ const e = document.activeElement; if (!e || e === document.body) return null;
        const style = getComputedStyle(e);
        return {{ name: ({DESCRIBE})(e), outlined: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2 }}; }})()""")


async def tab_through(browser):
    """Tabs until focus comes round to a control it has been on; returns each stop. (Past the last
    control focus leaves the page for the browser's own, and the next Tab brings it back.)"""
    stops = []
    for _ in range(100):
        await browser.press("Tab", "Tab", 9)
        stop = await focused(browser)
        if stop is None:
            continue
        if any(seen["name"] == stop["name"] for seen in stops):
            break
        stops.append(stop)
    return stops


async def tab_to(browser, name):
    for _ in range(80):
        stop = await focused(browser)
        if stop and stop["name"].startswith(name):
            return
        await browser.press("Tab", "Tab", 9)
    raise AssertionError(f"Tab never reached {name}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=os.path.join(ROOT, ".build", "debug", "parley-server"))
    parser.add_argument("--screenshot")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="parley-web-test-")
    server = Server(args.server, directory)
    server.start()
    browser = Browser(directory)
    failed = 0
    try:
        results = asyncio.run(scenario(server, browser, args.screenshot))
    except AssertionError as error:
        failed = 1
        results = []
        print(f"not ok - {error}", flush=True)
    finally:
        browser.close()
        server.stop()
    if failed:
        print(f"logs kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"web: {len(results)} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
