"""Packshots: a product cutout placed on a sales channel's canvas, as that channel's file.

Dagster-free core of the packshot step:

* :mod:`.presets`: :class:`ChannelPreset` (size, background, fill, format, limits),
  :data:`BUILTIN_PRESETS` and :func:`resolve_preset` (name, YAML mapping or preset);
* :mod:`.compose`: :func:`render_packshot` -> :class:`Packshot` (bytes + what was done);
* :mod:`.compliance`: :func:`check_packshot` -> list of :class:`ComplianceIssue`,
  measured from the file's bytes (and the cutout's, when given);
* :mod:`.cutout` (decoding, product box, sRGB) and :mod:`.encode` (format, quality,
  max_bytes) are the helpers both use.

Example::

    preset = resolve_preset("amazon_main")
    shot = render_packshot(cutout_png_bytes, preset)
    assert check_packshot(shot.data, preset, cutout=cutout_png_bytes) == []
"""

from __future__ import annotations

from .compliance import ComplianceIssue, check_packshot
from .compose import Packshot, render_packshot
from .presets import BUILTIN_PRESETS, ChannelPreset, PresetFields, resolve_preset

__all__ = [
    "BUILTIN_PRESETS",
    "ChannelPreset",
    "ComplianceIssue",
    "Packshot",
    "PresetFields",
    "check_packshot",
    "render_packshot",
    "resolve_preset",
]
