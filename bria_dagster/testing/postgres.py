"""A real PostgreSQL server for tests, from the binaries the `pgserver` wheel ships.

`pgserver.get_server()` itself listens on a Unix socket only and, when run as root, chmods
every parent folder of its data and binaries (up to /) so that its `pgserver` user can reach
them. Tests want TCP on 127.0.0.1 (host:port in error messages, a server to stop and
restart mid-run) and nothing changed outside a temporary folder, so this drives the wheel's
`initdb` / `pg_ctl` directly. Postgres refuses to run as root: as root the server runs as the
unprivileged `nobody`, from a copy of the binaries in the temporary folder (the venv may sit
in a folder `nobody` cannot enter, e.g. /root).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from .ports import reserve_port

__all__ = ["PostgresTestServer"]


def _wheel_install() -> Path:
    """The `pgserver` wheel's server tree (found without importing pgserver, whose import
    sets up a lock folder under XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "PostgresTestServer needs the pgserver wheel: pip install 'bria-dagster[testing]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


class PostgresTestServer:
    """``initdb`` + ``pg_ctl start`` on 127.0.0.1:<free port>; :meth:`stop` removes it all."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bria-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = reserve_port()
        self.user: str | None = None
        install = _wheel_install()
        if os.geteuid() == 0:
            self.user = "nobody"
            pw = pwd.getpwnam(self.user)
            self.root.chmod(0o755)
            # The binaries find their libraries at $ORIGIN/../../../pgserver.libs (auditwheel).
            libs = install.parent.parent / "pgserver.libs"
            copy = self.root / "wheel" / "pgserver"
            shutil.copytree(libs, copy.parent / "pgserver.libs")
            install = Path(shutil.copytree(install, copy / "pginstall", symlinks=True))
            self.data.mkdir(mode=0o700)
            os.chown(self.data, pw.pw_uid, pw.pw_gid)
            self.log.touch()
            os.chown(self.log, pw.pw_uid, pw.pw_gid)
        self.bin = install / "bin"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            user=self.user,
            cwd=self.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
        if done.returncode:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} {args[-1]} failed: {done.stderr}\n{log}")

    def init(self) -> PostgresTestServer:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: no shutdown checkpoint, like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def create_database(self, name: str) -> str:
        """A new database; returns its URL."""
        import psycopg2

        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):  # not running
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresTestServer:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
