"""Test your own pipelines offline, as AWS users test theirs with moto.

- :class:`FalTestServer`: fal.ai's queue protocol on https://127.0.0.1 with Bria's
  remove, replace and expand, driven by the real, unmodified ``fal_client``; with latency,
  a per-key concurrency cap and faults (429, 5xx, dropped connections, lost replies),
  and counters of what a client did (submissions, duplicates, cost billed).
  :func:`point_fal_client_at` aims an imported fal-client at it; :class:`FalServerProcess`
  runs it in its own process (``python -m bria_dagster.testing.fal_server``).
- :class:`PostgresTestServer`: a real PostgreSQL on 127.0.0.1 (the request journal, a
  Postgres-backed Dagster instance).
- :func:`running_s3_server`: an S3 on loopback (moto's server) that ``s3://`` storage
  reaches through s3fs and the standard AWS variables.

Needs the ``testing`` extra: ``pip install 'bria-dagster[testing]'``. Nothing else in
bria_dagster imports this package.
"""

from importlib.util import find_spec

_NEEDS = ("aiohttp", "trustme", "pgserver", "moto", "s3fs")
_missing = [name for name in _NEEDS if find_spec(name) is None]
if _missing:
    raise ImportError(
        f"bria_dagster.testing needs {', '.join(_missing)}, which the testing extra "
        "installs: pip install 'bria-dagster[testing]'"
    )

from .fal_server import (  # noqa: E402  (after the check, so a missing extra is named)
    ENDPOINT_PRICES,
    FalServerProcess,
    FalTestServer,
    Knobs,
    point_fal_client_at,
)
from .ports import reserve_port  # noqa: E402
from .postgres import PostgresTestServer  # noqa: E402
from .s3 import AWS_ENV, S3Server, counting_s3_requests, running_s3_server  # noqa: E402

__all__ = [
    "AWS_ENV",
    "ENDPOINT_PRICES",
    "FalServerProcess",
    "FalTestServer",
    "Knobs",
    "PostgresTestServer",
    "S3Server",
    "counting_s3_requests",
    "point_fal_client_at",
    "reserve_port",
    "running_s3_server",
]
