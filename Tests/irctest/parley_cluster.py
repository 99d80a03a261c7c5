"""irctest controller for two Parley nodes on one PostgreSQL database, behind one port.

Each test gets a fresh database on the PostgreSQL server that `PARLEY_IRCTEST_POSTGRES_URL` names
(e.g. postgresql://postgres@127.0.0.1:5432/postgres), two nodes (n1, n2) on it, and a small proxy
on the port irctest connects to that sends each new connection to the other node than the last:
a test's clients are spread over both nodes, so what one client does must reach the others
through the cluster, as on one server. `PARLEY_CLUSTER_SYNC` (seconds, default 0.05) is how long
irctest waits before collecting a client's lines: nodes tell each other through the database,
which takes a few milliseconds, where one server needs none.

    PARLEY_IRCTEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres Tests/irctest/run
"""

import json
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from typing import Any, List, Optional, Tuple, Type

from irctest.runner import NotImplementedByController

from parley import ParleyController, _running


def _free_port() -> int:
    """A port for a node to listen on, below the kernel's ephemeral range (32768 and up): a
    port picked from that range could be taken, before the node binds it, by the local end of
    an outgoing connection (the nodes' own PostgreSQL connections), which made a run fail with
    EADDRINUSE."""
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


class AlternatingProxy:
    """Listens on one port; each accepted connection is relayed to the next backend in turn."""

    def __init__(self, hostname: str, port: int) -> None:
        self.backends: List[Tuple[str, int]] = []
        self.next = 0
        self.sockets: List[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((hostname if hostname != "localhost" else "127.0.0.1", port))
        self.listener.listen(128)

    def start(self, backends: List[Tuple[str, int]]) -> None:
        """Relays connections from now on (irctest connects only once the nodes are up)."""
        self.backends = backends
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            backend = self.backends[self.next % len(self.backends)]
            self.next += 1
            try:
                server = socket.create_connection(backend)
            except OSError:
                client.close()
                continue
            for end in (client, server):
                end.setsockopt(socket.SOL_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, destination: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                destination.sendall(data)
        except OSError:
            pass
        try:
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for end in self.sockets:
                try:
                    end.close()
                except OSError:
                    pass
            self.sockets = []


class ParleyClusterController(ParleyController):
    software_name = "Parley (two nodes)"
    sync_sleep_time = float(os.environ.get("PARLEY_CLUSTER_SYNC", "0.05"))
    database_url: Optional[str] = None
    second: Optional[subprocess.Popen] = None
    proxy: Optional[AlternatingProxy] = None

    def run(self, hostname: str, port: int, *, password: Optional[str], ssl: bool, run_services: bool,
            faketime: Optional[str], websocket_hostname: Optional[str] = None, websocket_port: Optional[int] = None) -> None:
        if ssl:
            raise NotImplementedByController("TLS through the two-node proxy")
        if websocket_hostname is not None:
            raise NotImplementedByController("WebSocket through the two-node proxy")
        server = os.environ.get("PARLEY_IRCTEST_POSTGRES_URL")
        if not server:
            raise RuntimeError("set PARLEY_IRCTEST_POSTGRES_URL to a PostgreSQL server's URL")
        name = "irctest_" + uuid.uuid4().hex[:12]
        subprocess.run(["psql", server, "-q", "-c", f"CREATE DATABASE {name}"], check=True, stdout=subprocess.DEVNULL)
        self.database_url = server.rsplit("/", 1)[0] + "/" + name
        self.hostname = hostname
        super().run(hostname, port, password=password, ssl=ssl, run_services=run_services, faketime=faketime)

    def _start(self) -> None:
        assert self._config_path and self.database_url
        with open(self._config_path) as file:
            config: Any = json.load(file)
        # The admin commands (an account made offline) use the same database.
        config["database"] = self.database_url
        with open(self._config_path, "w") as file:
            json.dump(config, file, indent=2)
        # The port irctest chose is taken first: the nodes about to start open connections whose
        # local ports come from the same range.
        self.proxy = AlternatingProxy(self.hostname, self.port)
        backends = []
        for node in ("n1", "n2"):
            node_port = _free_port()
            node_config = dict(config, nodeName=node, listeners=[{"address": "127.0.0.1", "port": node_port}])
            node_config["dataDirectory"] = config["dataDirectory"] + "-" + node
            path = self._config_path.parent / f"parley-{node}.json"
            with open(path, "w") as file:
                json.dump(node_config, file, indent=2)
            proc = self.execute([self._binary(), "--config", str(path)])
            _running.add(proc)
            self._wait_for(node_port, proc)
            backends.append(("127.0.0.1", node_port))
            if node == "n1":
                self.proc = proc
            else:
                self.second = proc
        self.proxy.start(backends)

    @staticmethod
    def _wait_for(port: int, proc: subprocess.Popen) -> None:
        for _ in range(3000):
            if proc.poll() is not None:
                raise RuntimeError(f"a parley node exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("a parley node did not listen")

    def kill_proc(self) -> None:
        if self.proxy:
            self.proxy.close()
            self.proxy = None
        if self.second and self.second.poll() is None:
            self.second.terminate()
            try:
                self.second.wait(10)
            except subprocess.TimeoutExpired:
                self.second.kill()
        self.second = None
        super().kill_proc()


def get_irctest_controller_class() -> Type[ParleyClusterController]:
    return ParleyClusterController
