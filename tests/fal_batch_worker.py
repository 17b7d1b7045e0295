"""A batch of remove requests through FalBackend in its own process (for the SIGKILL test).

Usage: python tests/fal_batch_worker.py JOURNAL N   (env from FalTestServer.env())
Prints one line per completed item, then "DONE <ok> <failed>".
"""

from __future__ import annotations

import asyncio
import sys

from bria_dagster.client.backends.fal import FalBackend
from bria_dagster.client.contracts.remove import RemoveBackgroundRequest
from bria_dagster.client.journal import RequestJournal
from bria_dagster.client.runner import run_batch
from bria_dagster.engine.synthetic import make_product_photo


async def main(journal: str, count: int) -> None:
    backend = FalBackend(journal=RequestJournal(journal), poll_interval_s=0.05)
    items = [
        (i, RemoveBackgroundRequest(image_url=make_product_photo("white_studio", i, (64, 64))[0]))
        for i in range(count)
    ]
    ok = failed = 0
    try:
        async for outcome in run_batch(backend, items, max_concurrency=8):
            ok += outcome.ok
            failed += not outcome.ok
            reattached = outcome.result.reattached if outcome.result else None
            print(f"item {outcome.key} ok={outcome.ok} reattached={reattached}", flush=True)
    finally:
        await backend.aclose()
    print(f"DONE {ok} {failed}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
