"""How a run waits for a pool slot: asleep between claim checks, and checking often enough.

With op-granularity pools, a run started while its pool is full (what
``op_granularity_run_buffer`` is for: warm runs, past their imports and catalog step,
ready to take a slot the moment it frees) waits in Dagster's in-process executor loop. That
loop sleeps for ``InstanceConcurrencyContext.interval_to_next_pending_claim_check()``,
which in Dagster 1.13 returns ``min(0, ...)``: never more than 0. So a waiting run loops
without sleeping, one CPU core each, for as long as it waits: in
``benchmarks/scale_out.py``, two of the four runs at a time, most of the Dagster side's CPU.
The claim itself is retried only at its own backoff time (1 s, growing to 15 s), so sleeping
until then makes no slot arrive later.

:func:`sleep_between_claim_checks` replaces that one method with the interval it was meant
to return (the time until the earliest pending claim's next check, at least 0), and only
where the installed Dagster returns the spinning 0: a Dagster that fixes it is left alone.

It also caps the claim backoff at :data:`MAX_CLAIM_CHECK_INTERVAL_S` (Dagster's: 15 s). A
warm run has waited a whole fal step (a minute) by the time a slot frees, and its checks
are 6 s apart by then: the freed slot sat idle for 3 s on average, 5% of the benchmark's
wall time. A check is one claim query per waiting run (at most
``op_granularity_run_buffer`` of them) every 2 s.
"""

from __future__ import annotations

import time

from dagster._core.execution.plan import instance_concurrency_context
from dagster._core.execution.plan.instance_concurrency_context import (
    InstanceConcurrencyContext,
)

__all__ = ["MAX_CLAIM_CHECK_INTERVAL_S", "sleep_between_claim_checks"]

MAX_CLAIM_CHECK_INTERVAL_S = 2
"""The longest a run waiting for a pool slot goes without asking for it again."""


def _interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    """Seconds until the earliest pending claim is checked again (0: check now)."""
    if not self._pending_claims:
        return 0.0
    now = time.time()
    return max(0.0, min((t - now for t in self._pending_timeouts.values()), default=0.0))


def _spins() -> bool:
    """Whether the installed Dagster answers 0 for a claim due in a minute."""
    probe = object.__new__(InstanceConcurrencyContext)
    probe._pending_claims = {"step"}
    probe._pending_timeouts = {"step": time.time() + 60}
    return probe.interval_to_next_pending_claim_check() <= 0


def sleep_between_claim_checks() -> None:
    """Make a run waiting for a pool slot sleep until its next claim check, at most
    :data:`MAX_CLAIM_CHECK_INTERVAL_S` away (idempotent)."""
    method = InstanceConcurrencyContext.interval_to_next_pending_claim_check
    if method is not _interval_to_next_pending_claim_check and _spins():
        InstanceConcurrencyContext.interval_to_next_pending_claim_check = (  # type: ignore[method-assign]
            _interval_to_next_pending_claim_check
        )
    module = instance_concurrency_context
    if module.MAX_CONCURRENCY_CLAIM_BLOCKED_INTERVAL > MAX_CLAIM_CHECK_INTERVAL_S:
        module.MAX_CONCURRENCY_CLAIM_BLOCKED_INTERVAL = MAX_CLAIM_CHECK_INTERVAL_S
