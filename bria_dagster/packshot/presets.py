"""Channel presets: what one sales channel wants from a main product image.

A :class:`ChannelPreset` holds the canvas size, background colour, how much of the
frame the product fills, placement, optional contact shadow, file format, quality,
size limit and the compliance bounds :func:`~bria_dagster.packshot.check_packshot`
measures. :data:`BUILTIN_PRESETS` has a few well-known channels;
:func:`resolve_preset` turns a name, a mapping (from YAML) or a preset into one.

Fill
----
``fill`` is the share of the canvas the product's bounding box spans along its
limiting axis: ``max(bbox_width / canvas_width, bbox_height / canvas_height)``. The
bounding box is that of the cutout's half-opaque pixels (alpha >= 128, see
``cutout.EDGE_ALPHA``): the product's visible edge, so a soft matte's faint fringe does
not shrink the product. On a square canvas it is the product's longer side over
the canvas side, which is how "the product fills 85% of the frame" is usually read.
The renderer scales the product uniformly so the measured value equals ``fill``;
the checker measures the same quantity on the output file (bounding box of the
pixels that differ from the background) and wants it within ``[min_fill, max_fill]``.

Built-in presets and where their rules come from
------------------------------------------------
No internet here: no official help page could be opened. A search of stored page
copies (2026-11-30) found the official eBay picture policy and the official Google
``image_link`` page (its image requirements cut off in the stored excerpt); the other
figures come from third-party pages quoting the official rules, or from memory. The
URLs in ``source`` are the official pages as I know them; only the eBay and Google ones
were seen in the stored copies. "ours" marks a choice of this project, not a rule.
Confidence: *confirmed* = read in a stored copy of the official page; *3rd-party* =
several stored third-party copies agree; *memory* = not confirmed offline.

amazon_main (Seller Central "Product image requirements", G1881)

===================================== ======================== ===========================
rule                                  value used               confidence
===================================== ======================== ===========================
pure white background RGB 255,255,255 #FFFFFF                  3rd-party
product fills >= 85% of the frame     min_fill 0.85, fill 0.88 3rd-party
room to the edge (ours)               max_fill 0.95            ours: 2% border stays pure
>= 1000 px long side (zoom); 500 min  min_long_side 1000       3rd-party
JPEG preferred, sRGB                  jpeg q90, sRGB ICC       3rd-party
file size <= 10 MB                    max_bytes 10,000,000     one 3rd-party copy
square, 1600+ px recommended          2000x2000 (ours)         3rd-party (recommendation)
===================================== ======================== ===========================

shopify (help.shopify.com: product media types; theme images)

===================================== ======================== ===========================
rule                                  value used               confidence
===================================== ======================== ===========================
2048x2048 square recommended          2048x2048                3rd-party
file < 20 MB                          max_bytes 20,000,000     3rd-party
zoom needs >= 800 px                  min_long_side 800        3rd-party (not a hard rule)
max 5000x5000 / 25 MP (or 4472x4472)  (not checked)            3rd-party copies disagree
background, fill: not mandated        #FFFFFF, fill 0.85       ours
===================================== ======================== ===========================

google_shopping (Merchant Center help: image_link [image_link], answer 6324350)

===================================== ======================== ===========================
rule                                  value used               confidence
===================================== ======================== ===========================
min 100x100, apparel 250x250          min_long_side 250        3rd-party quoting the page
file <= 16 MB, <= 64 MP               max_bytes 16,000,000     3rd-party quoting the page
no watermark, promo text, border      (not checked)            3rd-party
product covers 75-90% of the image    fill 0.83, 0.75..0.90    3rd-party (advice)
>= 1500x1500 recommended              2000x2000 (ours)         3rd-party
background: white advised, not rule   #FFFFFF                  ours
500x500 minimum from 2027-01-31       not used                 one 3rd-party page only
===================================== ======================== ===========================

ebay (eBay help: picture policy)

===================================== ======================== ===========================
rule                                  value used               confidence
===================================== ======================== ===========================
>= 500 px on the longest side         min_long_side 500        confirmed
no added borders, text, watermarks    (not checked)            confirmed
1600x1600 recommended                 1600x1600                3rd-party
white or light background suggested   #FFFFFF, fill 0.85       memory / ours
max file size 12 MB (or 7 MB)         max_bytes 7,000,000      3rd-party copies disagree
===================================== ======================== ===========================

etsy (Etsy help: listing photo tips; exact article not known)

===================================== ======================== ===========================
rule                                  value used               confidence
===================================== ======================== ===========================
2000 px on the shortest side advised  2000x2000                memory (one copy: longest)
the same, as the compliance bar       min_long_side 2000       ours (advice, not a limit)
square thumbnails; no bg/fill rule    #FFFFFF, fill 0.80       memory / ours
file size limit                       unknown: max_bytes None  not found
===================================== ======================== ===========================

Zalando is not built in: its partner image specifications (size, grey background)
could not be found offline and I do not remember them reliably. Define it as a
custom preset once the rules are at hand.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any, Literal

import pydantic
from pydantic import ConfigDict, Field, field_validator, model_validator

from ..errors import PresetError

__all__ = [
    "BUILTIN_PRESETS",
    "FILL_TOLERANCE",
    "RENDERER_VERSION",
    "ChannelPreset",
    "resolve_preset",
]

FILL_TOLERANCE = 0.05
"""Default compliance band around ``fill`` when ``min_fill``/``max_fill`` are not given."""

RENDERER_VERSION = "bria_dagster.packshot/3"
"""Changes whenever the renderer's output for the same cutout and preset changes; part of
:meth:`ChannelPreset.parameters`, so stored packshots are not reused across versions."""

_HEX = re.compile(r"^#[0-9A-Fa-f]{6}$")
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
_CONTENT_TYPE = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class ChannelPreset(pydantic.BaseModel):
    """What one sales channel wants: canvas, background, fill, format and limits.

    Frozen; unknown fields are refused (a typo in YAML fails with the field's name).
    ``min_fill``/``max_fill`` default to ``fill -/+ FILL_TOLERANCE`` (clipped to 0..1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="Preset name, e.g. 'amazon_main'.")
    width: int = Field(ge=1, le=10000, description="Output width in px.")
    height: int = Field(ge=1, le=10000, description="Output height in px.")
    background: str = Field(
        "#FFFFFF", description="Background colour '#RRGGBB' (stored upper case)."
    )
    fill: float = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description="max(product bbox width / canvas width, bbox height / canvas height).",
    )
    min_fill: float = Field(ge=0.0, le=1.0, description="Compliance: lowest measured fill.")
    max_fill: float = Field(ge=0.0, le=1.0, description="Compliance: highest measured fill.")
    placement: Literal["center", "bottom"] = "center"
    margin: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Bottom placement: share of the height left below the product's bbox "
        "(0 sets it on the edge, which background_purity reports; 0.03 or more leaves the "
        "border strip clear).",
    )
    shadow: bool = Field(False, description="Soft contact shadow under the product.")
    decontaminate: bool = Field(
        True,
        description="Take the backdrop's colour out of the cutout's edge before placing it "
        "(no green rim from a green backdrop); see bria_dagster.packshot.spill.",
    )
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality (start value).")
    allow_alpha: bool = Field(
        False, description="PNG/WebP keep transparency (transparent background) when True."
    )
    max_bytes: int | None = Field(None, ge=1, description="File size limit in bytes.")
    min_long_side: int = Field(500, ge=1, description="Compliance: minimum long side in px.")
    source: str = Field("", description="Where the rules come from (URL + date) or 'custom'.")

    @model_validator(mode="before")
    @classmethod
    def _default_fill_bounds(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and ("min_fill" not in data or "max_fill" not in data):
            data = dict(data)
            try:
                fill = float(data.get("fill", 0.85))
            except (TypeError, ValueError):
                return data  # the field validator reports the bad fill
            data.setdefault("min_fill", round(max(0.0, fill - FILL_TOLERANCE), 4))
            data.setdefault("max_fill", round(min(1.0, fill + FILL_TOLERANCE), 4))
        return data

    @field_validator("background")
    @classmethod
    def _hex_colour(cls, value: str) -> str:
        if not isinstance(value, str) or not _HEX.match(value.strip()):
            raise ValueError(f"background {value!r} is not a hex colour '#RRGGBB' (e.g. '#FFFFFF')")
        return value.strip().upper()

    @model_validator(mode="after")
    def _consistent(self) -> ChannelPreset:
        if not self.min_fill <= self.fill <= self.max_fill:
            raise ValueError(
                f"fill bounds must satisfy min_fill <= fill <= max_fill, got "
                f"min_fill={self.min_fill}, fill={self.fill}, max_fill={self.max_fill}"
            )
        if self.allow_alpha and self.format == "jpeg":
            raise ValueError(
                "allow_alpha=True needs format 'png' or 'webp': JPEG has no transparency"
            )
        if self.placement == "bottom" and self.margin > 1.0 - self.fill + 1e-9:
            raise ValueError(
                f"margin={self.margin} with fill={self.fill} pushes the product out of the top "
                f"of the canvas; keep margin <= 1 - fill ({1.0 - self.fill:.4g})"
            )
        if max(self.width, self.height) < self.min_long_side:
            raise ValueError(
                f"size {self.width}x{self.height} is below the preset's own "
                f"min_long_side={self.min_long_side}; enlarge it or lower min_long_side"
            )
        return self

    @property
    def ext(self) -> str:
        """File extension without the dot: 'jpg', 'png' or 'webp'."""
        return _EXT[self.format]

    @property
    def content_type(self) -> str:
        """MIME type of the rendered file."""
        return _CONTENT_TYPE[self.format]

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        """The background colour as an ``(r, g, b)`` tuple."""
        hex_ = self.background
        return int(hex_[1:3], 16), int(hex_[3:5], 16), int(hex_[5:7], 16)

    def parameters(self) -> dict[str, Any]:
        """The resolved preset as a JSON-able dict, every field plus ``renderer``
        (:data:`RENDERER_VERSION`), for lineage records and reuse keys."""
        params = self.model_dump(mode="json")
        params["renderer"] = RENDERER_VERSION
        return params


BUILTIN_PRESETS: dict[str, ChannelPreset] = {
    name: ChannelPreset(name=name, **fields)
    for name, fields in tomllib.loads(
        resources.files(__package__).joinpath("channels.toml").read_text(encoding="utf-8")
    ).items()
}
"""The built-in channel presets, from ``channels.toml`` beside this module (each with the
source of its rules)."""

_EXTENDS = "extends"

PresetFields = pydantic.create_model(
    "PresetFields",
    __config__=ConfigDict(extra="forbid", frozen=True),
    __doc__="A custom preset as written in YAML (every field optional; "
    ":func:`resolve_preset` fills the rest: ``name`` from its key, fill bounds from "
    "``fill``, and everything else from the preset named in ``extends``).",
    extends=(
        str | None,
        Field(
            None,
            description="Start from this preset (built-in or custom) and change "
            "only the fields given.",
        ),
    ),
    **{
        name: (info.annotation | None, Field(None, description=info.description))
        for name, info in ChannelPreset.model_fields.items()
    },
)
"""The mapping form of a :class:`ChannelPreset` (unknown keys refused): its JSON schema is
what ``dg check yaml`` validates a component's custom presets against."""


def _field_errors(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "(preset)"
        if error.get("type") == "extra_forbidden":
            close = difflib.get_close_matches(str(error["loc"][-1]), ChannelPreset.model_fields)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parts.append(f"field {where!r} is not a preset field{hint}")
        else:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            shown = error.get("input")
            value = f" (got {shown!r})" if not isinstance(shown, Mapping) else ""
            parts.append(f"field {where!r}: {message}{value}")
    return "; ".join(parts)


def _validate(name: str, data: Mapping[str, Any]) -> ChannelPreset:
    try:
        return ChannelPreset.model_validate(data)
    except pydantic.ValidationError as exc:
        raise PresetError(
            f"channel preset {name!r} is invalid: {_field_errors(exc)}. Allowed fields: "
            f"{', '.join(ChannelPreset.model_fields)}"
        ) from None


def _from_mapping(
    key: str | None,
    mapping: Mapping[str, Any],
    known: Mapping[str, ChannelPreset | Mapping[str, Any]],
    seen: tuple[str, ...] = (),
) -> ChannelPreset:
    data = {str(k): v for k, v in mapping.items()}
    if key is not None:
        if "name" in data and data["name"] != key:
            raise PresetError(
                f"custom preset {key!r} has name {data['name']!r}; leave 'name' out "
                "(the key is the name) or make them equal"
            )
        data.setdefault("name", key)
    label = str(data.get("name", key or "(unnamed)"))
    base_name = data.pop(_EXTENDS, None)
    if base_name is None:
        data.setdefault("source", "custom")
        return _validate(label, data)
    if base_name == label and base_name in BUILTIN_PRESETS:
        base = BUILTIN_PRESETS[base_name]  # a custom override of a built-in, extending it
    elif not isinstance(base_name, str) or base_name in seen or base_name == label:
        raise PresetError(
            f"channel preset {label!r} extends {base_name!r}: 'extends' must name another "
            "preset, without cycles"
        )
    else:
        base = _lookup(base_name, known, (*seen, label))
    inherited = base.model_dump()
    if "fill" in data:  # new fill without new bounds: bounds follow the new fill
        for bound in ("min_fill", "max_fill"):
            inherited.pop(bound)
    inherited["source"] = f"custom, extends {base.name}: {base.source}"
    inherited.update(data)
    return _validate(label, inherited)


def _lookup(
    name: str,
    custom: Mapping[str, ChannelPreset | Mapping[str, Any]],
    seen: tuple[str, ...] = (),
) -> ChannelPreset:
    if name in custom:
        entry = custom[name]
        if isinstance(entry, ChannelPreset):
            return entry
        if isinstance(entry, Mapping):
            return _from_mapping(name, entry, custom, seen)
        raise PresetError(
            f"custom preset {name!r} is a {type(entry).__name__}; give a mapping of preset "
            "fields or a ChannelPreset"
        )
    if name in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[name]
    known = sorted(BUILTIN_PRESETS)
    custom_names = sorted(set(custom) - set(BUILTIN_PRESETS))
    close = difflib.get_close_matches(name, [*known, *custom_names], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = f"built-in: {', '.join(known)}"
    if custom_names:
        listing += f"; custom: {', '.join(custom_names)}"
    raise PresetError(
        f"unknown channel preset {name!r} (known presets, {listing}).{hint} Fix the name or "
        "define it under the custom presets."
    )


def resolve_preset(
    name_or_preset: str | ChannelPreset | Mapping[str, Any],
    custom: Mapping[str, ChannelPreset | Mapping[str, Any]] | None = None,
) -> ChannelPreset:
    """The :class:`ChannelPreset` for a name, a mapping of fields or a preset.

    * a name is looked up in ``custom`` first (so a team can override a built-in),
      then in :data:`BUILTIN_PRESETS`; an unknown name raises :class:`PresetError`
      listing the known ones;
    * a mapping (e.g. parsed YAML) is validated; a custom entry's key is its ``name``.
      The extra key ``extends: <preset name>`` starts from that preset and overrides the
      given fields (a new ``fill`` without bounds gets the default bounds);
    * a :class:`ChannelPreset` is returned as is.

    Invalid fields raise :class:`PresetError` naming each field and what is wrong.
    """
    custom = custom or {}
    if isinstance(name_or_preset, ChannelPreset):
        return name_or_preset
    if isinstance(name_or_preset, str):
        return _lookup(name_or_preset, custom)
    if isinstance(name_or_preset, Mapping):
        return _from_mapping(None, name_or_preset, custom)
    raise PresetError(
        f"a channel preset is a name, a mapping of fields or a ChannelPreset, not a "
        f"{type(name_or_preset).__name__} ({name_or_preset!r})"
    )
