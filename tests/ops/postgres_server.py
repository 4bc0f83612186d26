"""A real PostgreSQL server (Debian's ``postgresql`` package) in a temp folder on a free loopback port, made with
``initdb`` and run by the tests; as root, it runs as the package's ``postgres`` user (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

from tests.harness import free_port


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install postgresql; .ci/run does it)")
    return found


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="gateway-postgres-")
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self._dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self._dir, "data")
        subprocess.run(
            [
                *self._as,
                _binary("initdb"),
                "-D",
                data,
                "-U",
                "gateway",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
            check=True,
            capture_output=True,
        )
        self._log = open(os.path.join(self._dir, "log"), "wb")
        self._process = subprocess.Popen(
            [
                *self._as,
                _binary("postgres"),
                "-D",
                data,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                self._dir,
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        # ready once it accepts a session, not once it listens: it listens while still "starting up" (recovery,
        # a loaded machine), and a connection then is refused with CannotConnectNowError
        ready = [
            _binary("pg_isready"),
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "gateway",
            "-t",
            "1",
        ]
        deadline = time.monotonic() + 60
        while subprocess.run(ready, check=False, capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self._process.poll() is not None:
                raise RuntimeError(f"postgres on port {self.port} did not start: {self.log()}")
            time.sleep(0.05)

    @property
    def dsn(self) -> str:
        return f"postgresql://gateway@127.0.0.1:{self.port}/postgres"

    def log(self) -> str:
        try:
            with open(os.path.join(self._dir, "log"), encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        self._process.terminate()  # SIGTERM: a smart shutdown
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)
