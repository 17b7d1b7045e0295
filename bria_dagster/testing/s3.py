"""An S3-compatible server on loopback for tests: moto's server mode, reached through
s3fs exactly as a user's ``s3://bucket/prefix`` storage is, with the endpoint and keys
from the standard AWS environment variables (botocore reads ``AWS_ENDPOINT_URL``)."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bria-test-key",
    "AWS_SECRET_ACCESS_KEY": "bria-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "FSSPEC_S3_ENDPOINT_URL")


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def env(self) -> dict[str, str]:
        """The environment a process needs to use this server as its S3."""
        return {**AWS_ENV, "AWS_ENDPOINT_URL": self.endpoint_url}

    def fresh_filesystems(self) -> None:
        """Forget cached s3fs instances (they keep the credentials they were built with)."""
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """moto's threaded server on 127.0.0.1 (a free port), the AWS variables pointing at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(f"http://{host}:{port}")
    saved = {k: os.environ.get(k) for k in (*s3.env(), *_CLEARED)}
    for name in _CLEARED:
        os.environ.pop(name, None)
    os.environ.update(s3.env())
    s3.fresh_filesystems()
    try:
        yield s3
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        s3.fresh_filesystems()
        server.stop()


@contextlib.contextmanager
def counting_s3_requests() -> Iterator[collections.Counter[str]]:
    """Counts the S3 API calls s3fs makes (``get_object``, ``list_objects_v2``, ...) while
    inside: every request of every s3fs filesystem goes through ``_call_s3``. The key
    ``"<method>_s"`` adds up the seconds spent in that call (concurrent calls overlap)."""
    import s3fs

    counts: collections.Counter[str] = collections.Counter()
    original = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        name = getattr(method, "__name__", method)
        counts[name] += 1
        started = time.perf_counter()
        try:
            return await original(self, method, *args, **kwargs)
        finally:
            counts[f"{name}_s"] += time.perf_counter() - started

    s3fs.S3FileSystem._call_s3 = counted
    try:
        yield counts
    finally:
        s3fs.S3FileSystem._call_s3 = original
