"""irctest controller for Parley.

Starts the real `parley-server` binary for each test with a configuration written for that test.
Load it from PYTHONPATH: `PYTHONPATH=Tests/irctest pytest --controller parley ...` (see the README's
development section). `PARLEY_SERVER` names the binary (default: the debug build in .build).
"""

import atexit
import base64
import copy
import hashlib
import hmac
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Type

from irctest import patma
from irctest.basecontrollers import BaseServerController, DirectoryBasedController
from irctest.cases import BaseServerTestCase
from irctest.runner import NotImplementedByController
from irctest.specifications import Capabilities, OptionalBehaviors

REPOSITORY = Path(__file__).resolve().parents[2]

# Servers still running when this (xdist worker) process ends: irctest does not tear down a test
# that skips in its set-up, after the server started. Killed at exit, so no run leaves servers behind.
_running: "set[subprocess.Popen]" = set()


@atexit.register
def _kill_leftover_servers() -> None:
    for proc in list(_running):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
DEFAULT_BINARY = REPOSITORY / ".build" / "debug" / "parley-server"

# Few iterations: test accounts need no protection, and every REGISTER and login hashes.
TEST_PASSWORD_ITERATIONS = 16


def scram_verifier(password: str, iterations: int = TEST_PASSWORD_ITERATIONS) -> str:
    """The `scram-sha-256$iterations$salt$storedKey$serverKey` form that
    `parley-server hash-password` prints (Sources/ParleyCore/Auth/PasswordCredential.swift)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations, 32)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    return "$".join(["scram-sha-256", str(iterations), b64(salt), b64(stored_key), b64(server_key)])


BASE_CONFIG: Dict[str, Any] = {
    "serverName": "My.Little.Server",
    "networkName": "ParleyTest",
    # irctest's LINKS test expects this description.
    "serverDescription": "test server",
    "threads": 1,
    "logLevel": "warning",
    # Lifted: irctest opens many connections from 127.0.0.1 and sends bursts.
    "limits": {
        "floodCommandsPerSecond": 0,
        "maxConnectionsPerAddress": 0,
        "maxUnregisteredConnections": 0,
    },
    "accounts": {
        "passwordIterations": TEST_PASSWORD_ITERATIONS,
        "minimumPasswordLength": 1,
        "loginFailuresAllowed": 0,
        "loginFailuresPerNetworkAllowed": 0,
        "maxPasswordChecksInFlight": 0,
        "registrationsPerNetworkAllowed": 0,
    },
    "operators": [],
}


class ParleyController(BaseServerController, DirectoryBasedController):
    software_name = "Parley"
    _port_wait_interval = 0.01
    # irctest often sends a line on one connection and at once PINGs on another to collect what
    # it caused. Lines that reach two sockets within microseconds of each other have no order
    # (the kernel's epoll ready list and NIO may report either socket first): without a pause,
    # about one run in twenty of websocket.py saw the PING handled first and the test fail.
    # irctest's own knob for this, also used by its Bahamut and Sable controllers.
    sync_sleep_time = 0.005
    supported_sasl_mechanisms = {"PLAIN", "SCRAM-SHA-256"}
    supports_sts = False
    extban_mute_char = "m"

    # What Parley claims: a test needing one of these fails (instead of skipping) when the
    # server refuses it.
    capabilities = frozenset(
        (
            Capabilities.ACCOUNT_NOTIFY,
            Capabilities.ACCOUNT_TAG,
            Capabilities.AWAY_NOTIFY,
            Capabilities.BATCH,
            Capabilities.ECHO_MESSAGE,
            Capabilities.EXTENDED_JOIN,
            Capabilities.EXTENDED_MONITOR,
            Capabilities.LABELED_RESPONSE,
            Capabilities.MESSAGE_TAGS,
            Capabilities.MULTI_PREFIX,
            Capabilities.READ_MARKER,
            Capabilities.SERVER_TIME,
            Capabilities.SETNAME,
        )
    )

    optional_behaviors = frozenset(
        (
            OptionalBehaviors.BAN_EXCEPTION_MODE,
            OptionalBehaviors.CAP_REQ_MINUS,
            OptionalBehaviors.ELIST_M,
            OptionalBehaviors.ELIST_N,
            OptionalBehaviors.ELIST_U,
            OptionalBehaviors.INVITE_EXCEPTION_MODE,
            OptionalBehaviors.INVITE_LIST,
            OptionalBehaviors.INVITE_OVERRIDES_LIMIT,
            OptionalBehaviors.MULTI_JOIN,
            OptionalBehaviors.MULTI_KICK,
            OptionalBehaviors.MULTI_PRIVMSG,
            OptionalBehaviors.NO_CTCP,
            OptionalBehaviors.SASL_AFTER_REGISTRATION,
        )
    )

    isupport = {
        "BOT": "B",
        "ACCOUNTEXTBAN": "a",
        "CASEMAPPING": patma.ANYSTR,
        "ELIST": "MNU",
        "EXCEPTS": "e",
        "EXTBAN": ",am",
        "INVEX": "I",
        "MONITOR": patma.ANYSTR,
        "MSGREFTYPES": patma.ANYSTR,
        "PREFIX": "(qov)~@+",
        "STATUSMSG": "@+",
        "TARGMAX": patma.ANYSTR,
        "UTF8ONLY": None,
        "WHOX": None,
    }

    def run(
        self,
        hostname: str,
        port: int,
        *,
        password: Optional[str],
        ssl: bool,
        run_services: bool,
        faketime: Optional[str],
        websocket_hostname: Optional[str] = None,
        websocket_port: Optional[int] = None,
    ) -> None:
        if faketime is not None:
            raise NotImplementedByController("faketime")
        if self.test_config.account_registration_requires_email:
            raise NotImplementedByController("email verification of new accounts")
        assert self.proc is None
        self.create_config()
        assert self.directory

        config = copy.deepcopy(BASE_CONFIG)
        config["dataDirectory"] = str(self.directory / "data")
        if password is not None:
            config["serverPassword"] = password
        config["accounts"]["registrationBeforeConnect"] = self.test_config.account_registration_before_connect
        config["operators"] = [{"name": "operuser", "passwordHash": scram_verifier("operpassword")}]
        if self.debug_mode:
            config["logLevel"] = "trace"
        listener: Dict[str, Any] = {"address": hostname, "port": port}
        if ssl:
            self.gen_ssl()
            config["tls"] = {"certificateFile": str(self.pem_path), "privateKeyFile": str(self.key_path)}
            listener["tls"] = True
        config["listeners"] = [listener]
        if websocket_hostname is not None and websocket_port is not None:
            # A web listener: irctest connects to ws://host:port, which Parley upgrades at `/`.
            config["listeners"].append({"address": websocket_hostname, "port": websocket_port, "http": True})

        self.port = port
        self._config_path = self.directory / "parley.json"
        with open(self._config_path, "w") as file:
            json.dump(config, file, indent=2)
        self._start()

    def _binary(self) -> str:
        binary = os.environ.get("PARLEY_SERVER") or str(DEFAULT_BINARY)
        if not os.path.exists(binary) and shutil.which(binary) is None:
            raise RuntimeError(f"{binary} not found: build it (swift build) or set PARLEY_SERVER")
        return binary

    def _start(self) -> None:
        self.proc = self.execute([self._binary(), "--config", str(self._config_path)])
        _running.add(self.proc)
        for done in [proc for proc in _running if proc.poll() is not None]:
            _running.discard(done)

    def restart(self) -> None:
        self.kill_proc()
        self.port_open = False
        self._start()
        self.wait_for_port()

    def wait_for_services(self) -> None:
        # Accounts are built in: nothing else to start.
        pass

    def registerUser(
        self,
        case: BaseServerTestCase,
        username: str,
        password: Optional[str] = None,
    ) -> None:
        """Creates the account through the protocol, as a user would (draft/account-registration)."""
        if not case.run_services:
            raise ValueError("Attempted to register a nick, but `run_services` it not True.")
        assert password
        if len(f"REGISTER {username} * {password}".encode()) > 510:
            # Does not fit one IRC line (a test's 592-byte password): create it offline.
            self._createAccountOffline(username, password)
            return
        client = case.addClient(show_io=False)
        case.sendLine(client, "CAP LS 302")
        case.sendLine(client, "NICK " + username)
        case.sendLine(client, "USER r e g :user")
        case.sendLine(client, "CAP END")
        while case.getRegistrationMessage(client).command != "001":
            pass
        case.getMessages(client)
        case.sendLine(client, f"REGISTER {username} * {password}")
        for _ in range(100):
            msg = case.getMessage(client)
            if msg.command == "REGISTER" and msg.params[0] == "SUCCESS":
                break
            if msg.command == "FAIL":
                raise AssertionError(f"REGISTER {username} failed: {msg}")
        case.sendLine(client, "QUIT")
        case.assertDisconnected(client)


    def _createAccountOffline(self, username: str, password: str) -> None:
        """`parley-server account create` works on a stopped server's data directory."""
        self.kill_proc()
        self.port_open = False
        subprocess.run(
            [self._binary(), "account", "create", "--config", str(self._config_path), username],
            input=(password + "\n").encode(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self._start()
        self.wait_for_port()


def get_irctest_controller_class() -> Type[ParleyController]:
    return ParleyController
