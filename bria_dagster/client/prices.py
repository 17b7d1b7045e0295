"""The price table that costs, estimates and budgets are computed from.

Every endpoint's default is the list price its contract declares (with its source and
date); a table overrides any of them by endpoint name. Prices change and enterprise
contracts differ, so they are settings (``BriaClient(prices=...)``, the resource's
``prices``), and every record of a call keeps the unit price that applied
(``unit_price_usd``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .contracts import ENDPOINTS, contracts, endpoint_for
from .contracts.base import BriaRequest

__all__ = ["LIST_PRICES", "PriceTable"]

# The fields that name the first three endpoints' prices (kept for existing configs).
_NAMED = {
    "remove": "remove_usd_per_call",
    "replace": "replace_usd_per_image",
    "expand": "expand_usd_per_call",
}


def _list_price(name: str, unit: str) -> Any:
    price = endpoint_for(name).list_price
    return Field(
        default=price.usd,
        ge=0,
        description=f"{endpoint_for(name).endpoint_id}, per {unit}. Default: {price.source}, "
        f"as of {price.as_of}.",
    )


class PriceTable(BaseModel):
    """USD per unit (a call, or an output image where the contract says so) per endpoint.

    The defaults are the contracts' list prices (fal.ai's public prices as read on the
    date each gives). ``usd_per_unit`` sets any endpoint's price by name
    (``{"product_shot": 0.023}``); the first three also have a field of their own.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    remove_usd_per_call: float = _list_price("remove", "call")
    replace_usd_per_image: float = _list_price("replace", "output image (num_images)")
    expand_usd_per_call: float = _list_price("expand", "call")
    usd_per_unit: dict[str, float] = Field(
        default_factory=dict,
        description="Price per unit by endpoint name, for any endpoint (remove, replace, "
        "expand, ...); an endpoint not named costs its list price.",
    )
    source: str = Field(
        default="fal.ai list prices: "
        + "; ".join(f"{c.name}: {c.list_price.source}" for c in contracts()),
        description="Where these prices come from (a contract, a price page): for audits.",
    )
    as_of: str = Field(
        default=max(c.list_price.as_of for c in contracts()),
        description="When these prices were read or agreed (ISO date).",
    )

    @model_validator(mode="after")
    def _known_and_given_once(self) -> PriceTable:
        names = {c.name for c in ENDPOINTS.values()}
        for name, usd in self.usd_per_unit.items():
            if name not in names:
                raise ValueError(
                    f"usd_per_unit names an unknown endpoint {name!r}; known: "
                    f"{', '.join(sorted(names))}"
                )
            if usd < 0:
                raise ValueError(f"usd_per_unit[{name!r}] must be >= 0, got {usd}")
            named = _NAMED.get(name)
            own = None if named is None else getattr(self, named)
            if own is not None and own not in (usd, endpoint_for(name).list_price.usd):
                raise ValueError(
                    f"{name}'s price is given twice, {named}={own} and "
                    f"usd_per_unit[{name!r}]={usd}; give it once"
                )
        return self

    def unit_price_usd(self, request_or_id: BriaRequest | str) -> float:
        """The price of one unit (a call, or an output image) of an endpoint."""
        contract = endpoint_for(request_or_id)
        if contract.name in self.usd_per_unit:
            return self.usd_per_unit[contract.name]
        if contract.name in _NAMED:
            return float(getattr(self, _NAMED[contract.name]))
        return contract.list_price.usd

    def cost_usd(self, request: BriaRequest) -> float:
        """What ``request`` costs when it succeeds: unit price x units."""
        contract = endpoint_for(request)
        units = request.output_count() if contract.list_price.unit == "image" else 1
        return round(self.unit_price_usd(request) * units, 6)


LIST_PRICES = PriceTable()
"""The default :class:`PriceTable`: the contracts' list prices."""
