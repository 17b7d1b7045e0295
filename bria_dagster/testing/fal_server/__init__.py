"""A fal.ai queue-protocol server on 127.0.0.1 for driving the real ``fal_client``.

It speaks HTTPS with a throwaway CA (``trustme``, :mod:`.tls`) and implements what
fal-client 1.0.x sends and parses: queue submit, status, result and cancel
(:mod:`.queue`), the CDN upload and the older storage upload (:mod:`.files`), and fal's
status stream (server-sent events at ``.../status/stream``). The three Bria endpoints
produce real images (:mod:`.apps`): remove, replace and expand.

Knobs (constructor, :meth:`FalTestServer.configure`, ``POST /_test/configure``, or the
command line; :mod:`.faults`) add latency, a per-key concurrency limit (excess waits
``IN_QUEUE``) and faults: 429 with ``Retry-After``, 5xx (half carry ``x-fal-request-id``
so fal-client does not retry them, half look like nginx ingress errors so it does),
dropped connections, and result files that 404 once. ``fault_ops`` names the operations
the rates apply to (submit, status, result and file by default; also upload). Faults are
decided before any state changes, so a faulted submit never creates a job: a correct
client can reach zero duplicate submissions, which :meth:`FalTestServer.stats` counts.
The one exception is opt-in: ``rate_drop_after_submit`` creates the job and then drops
the reply (the lost response that makes a blind re-submit a duplicate, paid job).
``rate_stream_cut`` cuts status streams after their first event, ``status_stream=False``
answers them with a 404 (a server without the endpoint), and ``cpu_per_request_ms``
spends that much CPU on every HTTP request, as TLS and JSON handling do on a real server
(so a benchmark whose server shares the client's cores sees a real server's load).

In-process: ``with FalTestServer(...) as server: undo = point_fal_client_at(server)``.
Standalone (:mod:`.process`)::

    python -m bria_dagster.testing.fal_server --port 8443 --latency 0.5 \\
        --max-in-progress 32 --rate-429 0.1 --rate-5xx 0.05 --rate-drop 0.02 \\
        --rate-missing-once 0.01 --cpu-per-request-ms 3 --ca-out ca.pem

prints one JSON line (the env dict) when ready and serves until killed.
"""

from .faults import FAULT_KINDS, FAULT_OPS, Knobs
from .process import FalServerProcess
from .schema import ENDPOINT_PRICES, schema_errors
from .server import FalTestServer
from .tls import point_fal_client_at

__all__ = [
    "ENDPOINT_PRICES",
    "FAULT_KINDS",
    "FAULT_OPS",
    "FalServerProcess",
    "FalTestServer",
    "Knobs",
    "point_fal_client_at",
    "schema_errors",
]
