"""The server in standalone mode, in its own process (its CPU is not the client's):
``python -m bria_dagster.testing.fal_server`` and :class:`FalServerProcess` to drive it.

The process prints one JSON line (the env dict a client needs) when ready and serves until
killed. Its admin calls: ``GET /_test/stats``, ``POST /_test/reset``,
``POST /_test/configure`` (JSON knobs).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from .faults import Knobs
from .server import FalTestServer

__all__ = ["FalServerProcess", "main"]

_MODULE = "bria_dagster.testing.fal_server"


def _same_package_env() -> dict[str, str]:
    """The environment with this copy of bria_dagster first on PYTHONPATH, so that a child
    process runs the same code as its parent (a checkout, not another installed copy)."""
    root = str(Path(__file__).resolve().parents[3])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


class FalServerProcess:
    """``python -m bria_dagster.testing.fal_server`` in a child process.

    ``knobs`` are the command-line options (``latency=0.5`` -> ``--latency 0.5``).
    ``env`` is what a client process needs before it imports fal_client; the admin
    calls (``stats``, ``reset``, ``configure``) go over TLS with the server's CA.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, key: str = "test-key-0", **knobs: Any):
        self.ca = Path(workdir) / "fal-ca.pem"
        cmd = [sys.executable, "-m", _MODULE, "--port", "0", "--key", key]
        for name, value in knobs.items():
            flag = name.replace("_", "-")
            if isinstance(value, bool):  # --flag / --no-flag
                cmd += ["--" + ("" if value else "no-") + flag]
            elif value is not None:
                cmd += ["--" + flag, str(value)]
        cmd += ["--ca-out", str(self.ca)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True, env=_same_package_env()
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.kill()
            raise RuntimeError(
                f"the fal test server did not start; run `python -m {_MODULE}` to see why"
            )
        self.env: dict[str, str] = json.loads(line)
        self.key = self.env["FAL_KEY"]
        self.base = "https://" + self.env["FAL_RUN_HOST"]
        self._ssl = ssl.create_default_context(cafile=str(self.ca))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=self._ssl, timeout=30) as reply:
            return json.loads(reply.read())

    def configure(self, **knobs: Any) -> None:
        self._call("POST", "/_test/configure", knobs)

    def run_client(
        self,
        script: str,
        key: str,
        args: list[str],
        *,
        timeout: float = 3600,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``script --client <args>`` in a fresh process pointed at this server (its env set
        before fal_client is imported) with ``FAL_KEY=key`` and ``env`` (e.g. a
        ``PYTHONPATH`` naming another checkout to measure); its last stdout line, as JSON."""
        env = {**_same_package_env(), **self.env, "FAL_KEY": key, **(env or {})}
        proc = subprocess.run(
            [sys.executable, script, "--client", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"client {args} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def reset(self) -> None:
        self._call("POST", "/_test/reset", {})

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_test/stats")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {_MODULE}", description="fal.ai queue protocol test server"
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--max-in-progress", type=int, default=0, help="per key; 0 = unlimited")
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--rate-5xx", type=float, default=0.0)
    parser.add_argument("--rate-drop", type=float, default=0.0)
    parser.add_argument("--rate-missing-once", type=float, default=0.0)
    parser.add_argument("--rate-drop-after-submit", type=float, default=0.0)
    parser.add_argument("--rate-stream-cut", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=0.2)
    parser.add_argument("--max-files", type=int, default=20_000, help="0 = keep every file")
    parser.add_argument("--fault-ops", default=Knobs.fault_ops, help="ops the rates apply to")
    parser.add_argument(
        "--status-stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve .../status/stream (--no-status-stream: a 404, as a server without it)",
    )
    parser.add_argument(
        "--cpu-per-request-ms",
        type=float,
        default=0.0,
        help="CPU time spent on every HTTP request (busy, not asleep), as TLS and JSON cost",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--key", default="test-key-0", help="FAL_KEY printed in the env")
    parser.add_argument("--ca-out", default=None, help="where to write the CA PEM")
    args = parser.parse_args(argv)
    server = FalTestServer(
        args.port or None,
        ca_path=args.ca_out,
        latency=args.latency,
        max_in_progress=args.max_in_progress,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        rate_drop=args.rate_drop,
        rate_missing_once=args.rate_missing_once,
        rate_drop_after_submit=args.rate_drop_after_submit,
        rate_stream_cut=args.rate_stream_cut,
        retry_after=args.retry_after,
        max_files=args.max_files,
        fault_ops=args.fault_ops,
        status_stream=args.status_stream,
        cpu_per_request_ms=args.cpu_per_request_ms,
        seed=args.seed,
    )
    server.start()
    print(json.dumps(server.env(args.key)), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
