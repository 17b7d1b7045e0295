"""Background replacement for the local ``replace`` endpoint.

A cutout (RGBA, alpha = product matte) is placed standing on a ground line and
composited over either a reference photo (cover-fitted) or a seeded studio
backdrop whose palette and material follow words of the prompt. A soft contact
shadow and a slight colour harmonisation make the subject sit in the scene.
Everything is float32 array work; the same inputs and seed give the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from bria_dagster.errors import EngineError

__all__ = [
    "COLOR_WORDS",
    "MATERIAL_WORDS",
    "PROMPT_WORDS",
    "TONE_WORDS",
    "BackdropPalette",
    "SubjectPlacement",
    "parse_prompt_palette",
    "plan_subject",
    "render_scene",
    "replace_background",
    "subject_box",
]

COLOR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (178, 52, 48),
    "crimson": (160, 30, 50),
    "burgundy": (110, 28, 45),
    "orange": (225, 125, 50),
    "coral": (235, 125, 105),
    "peach": (240, 190, 160),
    "terracotta": (190, 100, 70),
    "yellow": (235, 205, 70),
    "gold": (205, 165, 75),
    "golden": (205, 165, 75),
    "green": (70, 140, 80),
    "olive": (125, 125, 65),
    "sage": (160, 175, 145),
    "mint": (170, 225, 195),
    "teal": (40, 125, 125),
    "turquoise": (70, 190, 185),
    "cyan": (80, 190, 210),
    "blue": (55, 95, 175),
    "navy": (30, 45, 90),
    "purple": (115, 65, 150),
    "violet": (135, 90, 175),
    "lavender": (190, 175, 220),
    "pink": (235, 160, 185),
    "magenta": (190, 50, 140),
    "brown": (120, 80, 50),
    "beige": (225, 205, 175),
    "cream": (240, 230, 205),
    "ivory": (245, 240, 225),
    "tan": (205, 175, 135),
    "white": (242, 242, 240),
    "black": (28, 28, 30),
    "gray": (140, 140, 142),
    "grey": (140, 140, 142),
    "charcoal": (60, 62, 66),
    "silver": (190, 192, 196),
}
"""Colour words and the RGB they stand for. The first found colours the wall,
a second one (if any) the floor."""

TONE_WORDS: dict[str, tuple[float, float]] = {
    # word: (mix toward white (+) or black (-), saturation factor)
    "pastel": (0.5, 0.7),
    "light": (0.3, 1.0),
    "pale": (0.4, 0.8),
    "soft": (0.2, 0.85),
    "dark": (-0.45, 1.0),
    "deep": (-0.3, 1.15),
    "moody": (-0.35, 0.9),
    "bright": (0.1, 1.25),
    "vivid": (0.0, 1.35),
    "muted": (0.0, 0.6),
}
"""Modifiers applied to every colour of the prompt."""

MATERIAL_WORDS: dict[str, tuple[str, tuple[int, int, int]]] = {
    # word: (texture, colour used when the prompt names no colour)
    "marble": ("marble", (232, 230, 226)),
    "wood": ("wood", (160, 115, 75)),
    "wooden": ("wood", (160, 115, 75)),
    "oak": ("wood", (180, 140, 95)),
    "walnut": ("wood", (105, 72, 50)),
    "concrete": ("concrete", (160, 158, 152)),
    "cement": ("concrete", (160, 158, 152)),
    "stone": ("concrete", (150, 145, 135)),
    "linen": ("linen", (220, 210, 190)),
    "fabric": ("linen", (205, 200, 190)),
    "velvet": ("velvet", (120, 40, 70)),
    "silk": ("velvet", (225, 215, 200)),
    "sand": ("sand", (222, 200, 160)),
    "sandy": ("sand", (222, 200, 160)),
    "beach": ("sand", (222, 200, 160)),
    "paper": ("linen", (240, 238, 232)),
}
"""Material words: a subtle procedural texture, and a default colour."""

PROMPT_WORDS: dict[str, tuple[str, ...]] = {
    "colours": tuple(COLOR_WORDS),
    "tones": tuple(TONE_WORDS),
    "materials": tuple(MATERIAL_WORDS),
}
"""Every prompt word the local backdrop understands, by kind (for documentation)."""

_NEUTRAL_WALL = (214, 212, 208)
_CUTOUT_ALPHA_MIN = 0.02  # alpha below this does not count as subject when measuring it
_DECONTAMINATE_RADII = (3, 12, 48)  # searched, in turn, for solid subject colour near an edge


@dataclass(frozen=True)
class BackdropPalette:
    """What a prompt asks for: wall and floor colours, an optional texture."""

    wall: tuple[int, int, int]
    floor: tuple[int, int, int]
    texture: str | None
    words: tuple[str, ...]
    """The prompt words that were understood (colours, tones, materials)."""


def _apply_tones(rgb: np.ndarray, tones: list[str]) -> np.ndarray:
    c = rgb.astype(np.float32)
    for tone in tones:
        mix, sat = TONE_WORDS[tone]
        grey = c.mean()
        c = grey + (c - grey) * sat
        c = c + mix * (255.0 - c) if mix >= 0 else c * (1.0 + mix)
    return np.clip(c, 0, 255)


def parse_prompt_palette(prompt: str) -> BackdropPalette:
    """The backdrop a prompt describes, from the words listed in this module.

    Unknown words are ignored; a prompt with no known word gives a neutral
    light-grey studio.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    colours = [w for w in words if w in COLOR_WORDS]
    tones = [w for w in words if w in TONE_WORDS]
    materials = [w for w in words if w in MATERIAL_WORDS]
    texture = MATERIAL_WORDS[materials[0]][0] if materials else None
    if colours:
        wall = np.array(COLOR_WORDS[colours[0]], np.float32)
        floor = np.array(COLOR_WORDS[colours[1]], np.float32) if len(colours) > 1 else None
    elif materials:
        wall = np.array(MATERIAL_WORDS[materials[0]][1], np.float32)
        floor = None
    else:
        wall, floor = np.array(_NEUTRAL_WALL, np.float32), None
    if floor is None:
        floor = wall * 0.86  # the same colour, a step darker
    wall, floor = _apply_tones(wall, tones), _apply_tones(floor, tones)
    understood = tuple(dict.fromkeys(colours + tones + materials))
    return BackdropPalette(
        wall=tuple(round(v) for v in wall),
        floor=tuple(round(v) for v in floor),
        texture=texture,
        words=understood,
    )


@dataclass(frozen=True)
class SubjectPlacement:
    """Affine placement of the cutout in the output: ``out = scale * in + offset``."""

    scale: float
    offset: tuple[float, float]
    ground_y: float
    """Output row where the subject's bottom stands."""

    def matrix(self, factor: float = 1.0) -> np.ndarray:
        """2x3 forward matrix, optionally for an output scaled by ``factor``."""
        s = self.scale * factor
        return np.array(
            [[s, 0, self.offset[0] * factor], [0, s, self.offset[1] * factor]], np.float32
        )


def subject_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the box of the cutout's visible pixels (``alpha`` in 0..1)."""
    rows = np.flatnonzero((alpha > _CUTOUT_ALPHA_MIN).any(axis=1))
    cols = np.flatnonzero((alpha > _CUTOUT_ALPHA_MIN).any(axis=0))
    if not len(rows):
        raise EngineError(
            "the cutout is fully transparent (no product in its alpha): run background "
            "removal on the source image again or check that it shows a product"
        )
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def plan_subject(alpha: np.ndarray, *, seed: int, variant: int = 0) -> SubjectPlacement:
    """Where the subject goes: standing on a ground line at ~85-90% of the height.

    The subject is shrunk (never enlarged) to leave a margin; placement, scale
    and ground line are jittered from ``(seed, variant)``.
    """
    h, w = alpha.shape
    x0, y0, x1, y1 = subject_box(alpha)
    rng = np.random.default_rng([seed, variant, 1])
    ground = h * rng.uniform(0.85, 0.90)
    fit = min(1.0, (ground - 0.1 * h) / (y1 - y0), 0.84 * w / (x1 - x0))
    scale = fit * rng.uniform(0.9, 1.0)
    centre_x = w * (0.5 + rng.uniform(-0.04, 0.04))
    offset = (centre_x - scale * (x0 + x1) / 2, ground - scale * y1)
    return SubjectPlacement(scale=float(scale), offset=offset, ground_y=float(ground))


def _noise(shape: tuple[int, int], rng: np.random.Generator, cell: int) -> np.ndarray:
    """Smooth value noise in about [-1, 1], one random value per ``cell`` pixels."""
    h, w = shape
    small = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * 0.7


def _texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A subtle texture in about [-1, 1] (computed at half size, then enlarged)."""
    th, tw = max(2, h // 2), max(2, w // 2)
    yy = np.linspace(0, 1, th, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, tw, dtype=np.float32)[None, :]
    if kind == "marble":
        turbulence = _noise((th, tw), rng, max(4, tw // 6)) + 0.5 * _noise((th, tw), rng, 8)
        veins = np.sin((xx * 3 + yy * 5) * np.float32(np.pi) * 2 + 4 * turbulence)
        t = 1 - np.abs(veins) ** 0.25 * 2 + 0.6
    elif kind == "wood":
        warp = _noise((th, tw), rng, max(4, th // 4))
        t = np.sin(yy * rng.uniform(50, 80) + 2.5 * warp) * 0.7 + 0.3 * _noise((th, tw), rng, 3)
    elif kind == "concrete":
        t = _noise((th, tw), rng, max(4, tw // 12)) + 0.6 * rng.standard_normal((th, tw)).astype(
            np.float32
        )
    elif kind == "linen":
        weave = np.sin(xx * tw * 1.3) * np.sin(yy * th * 1.3)
        t = 0.5 * weave + 0.5 * _noise((th, tw), rng, 2)
    elif kind == "velvet":
        t = _noise((th, tw), rng, max(4, tw // 4)) * 1.4
    else:  # sand: ripples plus fine grain
        ripples = np.sin(yy * 90 + 3 * _noise((th, tw), rng, max(4, tw // 8)))
        t = 0.4 * ripples + 0.8 * rng.standard_normal((th, tw)).astype(np.float32)
    return cv2.resize(t.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def _studio_backdrop(
    palette: BackdropPalette, h: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    wall = np.array(palette.wall, np.float32)
    floor = np.array(palette.floor, np.float32)
    horizon = rng.uniform(0.62, 0.72)
    band = rng.uniform(0.03, 0.06)
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    # Floor weight: smoothstep across the horizon band.
    t = np.clip((ys - horizon + band) / (2 * band), 0, 1)
    t = t * t * (3 - 2 * t)
    wall_shade = 1.08 - 0.12 * np.clip(ys / horizon, 0, 1)  # lighter at the top
    floor_shade = 0.92 + 0.1 * np.clip((ys - horizon) / (1 - horizon), 0, 1)
    column = ((1 - t) * wall_shade)[:, None] * wall + (t * floor_shade)[:, None] * floor
    # Lighting (vignette, a soft spot behind the subject, texture) is smooth:
    # computed at half size and enlarged.
    lh, lw = max(2, h // 2), max(2, w // 2)
    lys = (np.arange(lh, dtype=np.float32) + 0.5) / lh
    lxs = (np.arange(lw, dtype=np.float32) + 0.5) / lw
    cx, cy = 0.5 + rng.uniform(-0.12, 0.12), horizon - rng.uniform(0.1, 0.25)
    r2 = ((lxs - 0.5) ** 2)[None, :] + ((lys - 0.5) ** 2)[:, None]
    spot2 = ((lxs - cx) ** 2)[None, :] + ((lys - cy) ** 2)[:, None]
    light = (
        1
        - np.float32(rng.uniform(0.25, 0.4)) * r2
        + np.float32(rng.uniform(0.04, 0.08)) * np.exp(-spot2 / np.float32(rng.uniform(0.05, 0.12)))
    )
    if palette.texture is not None:
        light += np.float32(0.035) * _texture(palette.texture, lh, lw, rng)
    # Fine grain against banding (and so that variants never coincide).
    light += rng.standard_normal((lh, lw), dtype=np.float32) * np.float32(
        0.8 / max(float(column.mean()), 20.0)
    )
    light = cv2.resize(light.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.merge([light * column[:, c : c + 1] for c in range(3)])


def _cover_fit(reference: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if reference.dtype != np.uint8 or reference.ndim != 3 or reference.shape[2] != 3:
        raise EngineError(
            f"the reference image must be uint8 HxWx3 RGB, got {reference.dtype} {reference.shape}"
        )
    rh, rw = reference.shape[:2]
    zoom = rng.uniform(1.0, 1.06)  # a little variation in framing per variant
    scale = max(w / rw, h / rh) * zoom
    sw, sh = max(w, round(rw * scale)), max(h, round(rh * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    fitted = cv2.resize(reference, (sw, sh), interpolation=interp)
    x = round((sw - w) * rng.uniform(0.3, 0.7))
    y = round((sh - h) * rng.uniform(0.3, 0.7))
    return fitted[y : y + h, x : x + w].astype(np.float32)


def _contact_shadow(
    alpha: np.ndarray, place: SubjectPlacement, h: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    """A blurred, squashed copy of the alpha under the subject (computed at 1/4 size)."""
    f = 0.25
    sh, sw = max(2, round(h * f)), max(2, round(w * f))
    squash = rng.uniform(0.06, 0.12)
    m = place.matrix(f).astype(np.float64)
    g = place.ground_y * f
    # Squash vertically about the ground line, with a slight lean from the light.
    lean = rng.uniform(-0.15, 0.15)
    squash_m = np.array([[1, lean, -lean * g], [0, squash, g * (1 - squash)]], np.float64)
    total = squash_m @ np.vstack([m, [0, 0, 1]])
    small = cv2.warpAffine(alpha, total.astype(np.float32), (sw, sh), flags=cv2.INTER_LINEAR)
    sigma = max(0.8, rng.uniform(0.008, 0.014) * sh)
    small = cv2.GaussianBlur(small, (0, 0), sigma)
    shadow = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return shadow * np.float32(rng.uniform(0.35, 0.5))


def _mask(condition: np.ndarray) -> np.ndarray:
    """A boolean array as an OpenCV mask (uint8, 0 or 255)."""
    return condition.astype(np.uint8) * np.uint8(255)


def _harmonise(rgb: np.ndarray, alpha8: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """The subject's colours shifted 12% of the way toward the scene's mean (at most 12 levels)."""
    solid = _mask(alpha8 > 127)
    if not solid.any():
        solid = _mask(alpha8 > 0)
    subject_mean = np.array(cv2.mean(rgb, mask=solid)[:3])
    scene_mean = np.array(cv2.mean(scene)[:3])
    shift = np.clip(0.12 * (scene_mean - subject_mean), -12, 12)
    return cv2.add(rgb, (*shift.tolist(), 0.0))  # rounds and saturates


def _decontaminate(rgb: np.ndarray, alpha8: np.ndarray) -> np.ndarray:
    """Edge pixels (0 < alpha < 1) take the colour of the solid subject next to them (in place).

    A matte keeps the old background mixed into its soft edge; without this a
    light halo from the old backdrop would outline the subject on the new one.
    """
    x0, y0, x1, y1 = subject_box(alpha8.astype(np.float32) / 255.0)
    a = alpha8[y0:y1, x0:x1]
    solid = a >= 250
    edge = (a > 0) & ~solid
    if not solid.any() or not edge.any():
        return rgb
    roi = rgb[y0:y1, x0:x1]
    solid_weight = solid.astype(np.float32)
    solid_colour = roi * solid_weight[..., None]
    for radius in _DECONTAMINATE_RADII:  # nearest solid colour first, wider if none is near
        k = (2 * radius + 1, 2 * radius + 1)
        weight = cv2.blur(solid_weight, k)
        mean = cv2.divide(cv2.blur(solid_colour, k), cv2.merge([weight] * 3) + np.float32(1e-6))
        replace = edge & (weight > 1e-3)
        np.copyto(roi, np.clip(mean + 0.5, 0, 255).astype(np.uint8), where=replace[..., None])
        edge &= ~replace
        if not edge.any():
            break
    return rgb


def _compose(
    cutout: np.ndarray,
    background: np.ndarray,
    place: SubjectPlacement,
    rng: np.random.Generator,
) -> np.ndarray:
    h, w = background.shape[:2]
    a8 = np.ascontiguousarray(cutout[..., 3])
    rgb = _decontaminate(cv2.cvtColor(cutout, cv2.COLOR_RGBA2RGB), a8)  # a fresh copy
    rgb = _harmonise(rgb, a8, background)
    # Premultiplied colour, so transparent pixels do not bleed into the edges when resampled.
    premultiplied = cv2.multiply(rgb, cv2.merge([a8, a8, a8]), scale=1 / 255)
    m = place.matrix()
    colour = cv2.warpAffine(premultiplied, m, (w, h), flags=cv2.INTER_LINEAR)
    a = cv2.warpAffine(a8, m, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    shadow = _contact_shadow(a8.astype(np.float32) / 255.0, place, h, w, rng)
    keep = (1 - shadow) * (1 - a)
    out = cv2.multiply(background, cv2.merge([keep, keep, keep]))
    return cv2.add(out, colour, dtype=cv2.CV_8U)  # rounds and saturates


def replace_background(
    cutout: np.ndarray,
    *,
    prompt: str | None = None,
    reference: np.ndarray | None = None,
    seed: int,
    num_images: int = 1,
) -> list[np.ndarray]:
    """``num_images`` RGB scenes (uint8 HxWx3, the cutout's size) with the subject in them.

    Give exactly one of ``prompt`` (a studio backdrop in the prompt's colours
    and material) or ``reference`` (an RGB photo used as the background).
    """
    if cutout.dtype != np.uint8 or cutout.ndim != 3 or cutout.shape[2] != 4:
        raise EngineError(
            f"the cutout must be uint8 HxWx4 RGBA, got {cutout.dtype} {cutout.shape}: "
            "pass the output of background removal"
        )
    has_prompt = prompt is not None and prompt.strip() != ""
    if has_prompt == (reference is not None):
        raise EngineError(
            "background replacement needs exactly one of a prompt or a reference image "
            f"(got {'both' if has_prompt else 'neither'})"
        )
    if seed < 0:
        raise EngineError(f"seed must be a non-negative integer, got {seed}")
    if num_images < 1:
        raise EngineError(f"num_images must be at least 1, got {num_images}")
    h, w = cutout.shape[:2]
    alpha = cutout[..., 3].astype(np.float32) / 255.0
    return [
        render_scene(
            cutout,
            plan_subject(alpha, seed=seed, variant=variant),
            (w, h),
            prompt=prompt if has_prompt else None,
            reference=reference,
            seed=seed,
            variant=variant,
        )
        for variant in range(num_images)
    ]


def render_scene(
    cutout: np.ndarray,
    place: SubjectPlacement,
    size: tuple[int, int],
    *,
    prompt: str | None,
    reference: np.ndarray | None,
    seed: int,
    variant: int = 0,
) -> np.ndarray:
    """One RGB scene (uint8, ``size`` = width x height): the cutout placed by ``place`` on a
    studio backdrop in the prompt's colours and material, or on ``reference`` cover-fitted,
    with a contact shadow. The same inputs, seed and variant give the same bytes."""
    w, h = size
    rng = np.random.default_rng([seed, variant, 2])
    if reference is None:
        background = _studio_backdrop(parse_prompt_palette(prompt or ""), h, w, rng)
    else:
        background = _cover_fit(reference, h, w, rng)
    return _compose(cutout, background, place, rng)
