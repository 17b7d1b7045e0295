"""The Bria endpoints bria-dagster calls: one module per endpoint, found by discovery.

Each module of this package (except ``base``) declares one endpoint: its request and
response models, its list price, and how the embedded engine runs it, in a module-level
``CONTRACT`` (an :class:`~bria_dagster.client.contracts.base.EndpointContract`). The
registry below imports every such module when the package is first imported, so a new
endpoint is one new module here: prices, backends, the runner, usage figures and
:func:`build_request` pick it up with no other edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import BaseModel, ValidationError

from ...errors import RequestValidationError
from .base import BriaRequest, EndpointContract

__all__ = ["ENDPOINTS", "build_request", "contracts", "endpoint_for"]


def _discover() -> dict[str, EndpointContract]:
    found: dict[str, EndpointContract] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name == "base" or module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        contract = getattr(module, "CONTRACT", None)
        if not isinstance(contract, EndpointContract):
            raise TypeError(f"{module.__name__} must declare CONTRACT = EndpointContract(...)")
        for other in found.values():
            if contract.name == other.name or contract.endpoint_id == other.endpoint_id:
                raise TypeError(f"{module.__name__} declares {contract.name!r} a second time")
        found[contract.endpoint_id] = contract
    return found


ENDPOINTS: dict[str, EndpointContract] = _discover()
"""Every endpoint's contract, by endpoint id (``fal-ai/bria/background/remove``)."""


def contracts() -> list[EndpointContract]:
    """Every endpoint's contract, in the order of their module names."""
    return list(ENDPOINTS.values())


def endpoint_for(request_or_id: BriaRequest | str) -> EndpointContract:
    """The contract of a request, an endpoint id, or a short name (``remove``)."""
    key = request_or_id if isinstance(request_or_id, str) else request_or_id.endpoint_id
    if key in ENDPOINTS:
        return ENDPOINTS[key]
    for contract in ENDPOINTS.values():
        if contract.name == key:
            return contract
    raise RequestValidationError(
        f"unknown endpoint {key!r}; known: {', '.join(ENDPOINTS)} "
        f"(or {', '.join(c.name for c in ENDPOINTS.values())})"
    )


def build_request(endpoint: str, **arguments: Any) -> BriaRequest:
    """Validate ``arguments`` for ``endpoint`` (id or short name).

    Raises :class:`RequestValidationError` naming each bad field and the allowed
    range; nothing is sent anywhere.
    """
    model = endpoint_for(endpoint).request_model
    try:
        return model(**arguments)
    except ValidationError as exc:
        raise RequestValidationError(_describe(exc, model)) from None


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _allowed_range(model: type[BaseModel], field: str) -> str | None:
    info = model.model_fields.get(field)
    if info is None:
        return None
    low = high = None
    for meta in info.metadata:
        low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
        high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
    if low is None and high is None:
        return None
    return f"{'' if low is None else low}..{'' if high is None else high}"


def _describe(exc: ValidationError, model: type[BriaRequest]) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in _RANGE_ERRORS and (allowed := _allowed_range(model, field)):
            msg = f"{err.get('input')!r} is out of range; allowed {allowed}"
        elif err["type"] == "enum":
            msg = f"{err.get('input')!r} is not allowed; {msg.lower()}"
        parts.append(f"{field}: {msg}" if field else msg)
    return f"invalid {model.endpoint_id} request: " + "; ".join(parts)
