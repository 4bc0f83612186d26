"""Real redis-server processes (Debian package) on free loopback ports, started and stopped by the tests: one
server, which a test may stop and start again on the same port, and a 3-master Redis Cluster."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from tests.harness import free_port


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install redis-server; .ci/run does it)")
    return found


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"redis-server on port {port} did not start") from None
            time.sleep(0.02)


class RedisServer:
    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self._extra = extra
        self._dir = tempfile.mkdtemp(prefix="gateway-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Starts it (again: on the same port, empty)."""
        self._process = subprocess.Popen(
            [
                _binary("redis-server"),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                *self._extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.port, self._process)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [_binary("redis-cli"), "-p", str(self.port), *args], check=True, capture_output=True, text=True
        ).stdout

    def flush(self) -> None:
        self.cli("FLUSHALL")

    def stop(self) -> None:
        """Stops the process (a test's Redis going away); ``start`` brings it back."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class RedisCluster:
    """Three masters, no replicas, every slot assigned (``redis-cli --cluster create``)."""

    def __init__(self) -> None:
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(3):
                # the cluster bus on a free port of its own (by default port + 10000: maybe taken, or > 65535)
                node = RedisServer(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    str(free_port()),
                )
                self.nodes.append(node)
            subprocess.run(
                [
                    _binary("redis-cli"),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )
            deadline = time.monotonic() + 20
            while not all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.05)
        except BaseException:
            self.remove()
            raise

    @property
    def url(self) -> str:
        """One node's URL: the client learns the others from it (``stores.redis_cluster: true``)."""
        return self.nodes[0].url

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()
