"""The steps there are: every module of :mod:`bria_dagster.steps.endpoint_steps`, found.

Each module there declares one :class:`~bria_dagster.steps.step.Step` as ``STEP``; adding
a module adds the step everywhere (settings, the component's YAML, the chain, assets,
checks, lineage, the report). Steps are listed parents first, then by ``order`` and name.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ..errors import ConfigurationError
from . import endpoint_steps
from .step import SOURCE, Step

__all__ = ["all_steps", "step_named", "step_names", "step_rank"]


@cache
def all_steps() -> tuple[Step, ...]:
    """Every declared step, parents before their children."""
    found: dict[str, Step] = {}
    for info in pkgutil.iter_modules(endpoint_steps.__path__):
        module = importlib.import_module(f"{endpoint_steps.__name__}.{info.name}")
        step = getattr(module, "STEP", None)
        if not isinstance(step, Step):
            raise ConfigurationError(
                f"{module.__name__} declares no STEP: every module of "
                f"{endpoint_steps.__name__} is one step (a bria_dagster.steps.step.Step)"
            )
        if step.name in found or step.name == SOURCE:
            raise ConfigurationError(f"step name {step.name!r} is declared twice")
        found[step.name] = step
    listed: list[Step] = []
    waiting = sorted(found.values(), key=lambda s: (s.order, s.name))
    while waiting:
        ready = [s for s in waiting if s.parent == SOURCE or s.parent in {x.name for x in listed}]
        if not ready:
            names = ", ".join(f"{s.name} (parent {s.parent!r})" for s in waiting)
            raise ConfigurationError(f"steps whose parent is not a declared step: {names}")
        listed.append(ready[0])
        waiting.remove(ready[0])
    return tuple(listed)


def step_names() -> tuple[str, ...]:
    """The declared steps' names, parents first."""
    return tuple(step.name for step in all_steps())


def step_named(name: str) -> Step:
    """The declaration of step ``name``."""
    for step in all_steps():
        if step.name == name:
            return step
    raise ConfigurationError(f"step {name!r} is not one of {', '.join(step_names())}")


@cache
def step_rank() -> dict[str, int]:
    """Each step's place in listings (the source 0), for ordering records by step."""
    return {SOURCE: 0, **{name: i for i, name in enumerate(step_names(), start=1)}}
