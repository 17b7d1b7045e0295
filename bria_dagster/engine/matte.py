"""Classical background removal for product photography.

Method, at a reduced working size:

1. Backdrop model. A smooth backdrop (studio sweep, gradient, vignette,
   coloured paper) is a quadratic surface per RGB channel fitted to the image
   border (robust refit without the worst border pixels). Each pixel is
   compared in Lab with that colour scaled by the best gain k in
   [1 - shadow_depth, 1], so a cast shadow (the backdrop colour, darker) is
   backdrop on white and on coloured paper alike; using the gain costs a little.
   When the border does not predict the whole backdrop (a hot spot, a strong
   off-centre vignette), the surface is refitted, at degree 4, on every pixel
   found to be backdrop so far.
   A textured backdrop (busy border) is instead a palette of border colours
   (k-means in Lab) and a pixel's score is its distance to the nearest one,
   scaled by the border's own spread. A busy backdrop that is out of focus
   (bokeh: no smooth surface fits its border, yet its edges are soft) is found
   by what it lacks: the product is the sharp outline, and the convex hull of
   the sharp outlines away from the border is the probable subject.
2. Mask. The score is thresholded with hysteresis, cleaned morphologically,
   small non-backdrop holes are filled and specks dropped; true holes (a mug
   handle) stay transparent.
3. Outlines (smooth backdrops). A product close to the backdrop colour (white
   on white, blue on blue) still has a sharp outline while shadows are soft:
   edges of the high-pass image are closed into outlines and enclosed regions
   whose residual is above the backdrop noise are added.
4. GrabCut (OpenCV's ``cv2.grabCut``) refines the mask where the backdrop model is
   unsure: always on textured and out-of-focus backdrops (a palette only
   approximates wood or marble), on a refitted smooth backdrop (patches of the hot
   spot may remain), and on other smooth ones when little of the mask scores far
   above the threshold (a white product on white). Seeds: the border is sure
   background, the mask's confident interior (or the interiors the sharp outlines
   enclose) sure foreground, the rest of the mask probable foreground. On a smooth
   backdrop the border predicted, GrabCut may only add to the mask. Enclosed
   slivers of background (cracks, not handles) are then filled.
5. Alpha, at full size, on the refined mask. In a band around the mask edge the local product and
   backdrop colours F and B (shadow included) are averaged from the sure pixels
   nearby and alpha is solved from ``I = alpha F + (1 - alpha) B``; where F and
   B are too alike, a guided filter of the mask is used instead.

Limits: the subject should not cover most of the border. White on white and
products that match the backdrop colour are best effort (parts of the product
that equal the backdrop exactly cannot be told apart without a learned model);
see benchmarks/local_quality.py for measured figures. Use the ONNX option
(bria_dagster.engine.onnx_matte) for general photographs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["MatteConfig", "guided_filter", "remove_background", "to_rgba"]


@dataclass(frozen=True)
class MatteConfig:
    work_size: int = 512
    """Longest side at which the mask is computed (speed); alpha is refined at full size."""
    border: float = 0.04
    """Fraction of each side sampled as background."""
    low: float = 6.0
    high: float = 14.0
    """Hysteresis thresholds on the Lab distance to the background model."""
    shadow_depth: float = 0.3
    """Largest darkening (fraction of the backdrop colour) that may be a cast shadow."""
    shadow_weight: float = 0.15
    """Cost, in Lab units per percent of darkening, of explaining a pixel as shadow."""
    edge_min: float = 3.0
    """Least Sobel magnitude (RGB levels) of a sharp edge used to close an outline."""
    edge_scale: float = 2.0
    """Gaussian sigma (work pixels) removed before edge detection: only sharp steps remain."""
    edge_noise: float = 1.5
    """Edge threshold as a multiple of the border's 99th-percentile gradient (noise)."""
    edge_weak: float = 0.4
    """Fraction of the edge threshold down to which an edge connected to a clear one counts."""
    smooth_backdrop: float = 4.0
    """Median border gradient above which the backdrop is textured: outlines are not used."""
    outline_gap: int = 5
    """Diameter (work pixels) of the closing that bridges gaps in an outline."""
    hole_dist: float = 0.8
    hole_noise: float = 3.0
    """An enclosed region is product, not a hole, when its mean residual to the backdrop
    exceeds ``max(hole_dist, hole_noise * mean border residual)``."""
    texture_gradient: float = 4.0
    """Median border gradient (grey levels, Sobel) above which the backdrop is textured."""
    texture_blur: float = 2.0
    """Gaussian sigma (work pixels) smoothing a textured backdrop before colour clustering."""
    texture_shrink: float = 2.0
    """Erosion of a textured-backdrop mask, in units of ``texture_blur``."""
    texture_clusters: int = 8
    """Backdrop colours clustered from the border of a textured backdrop."""
    band: float = 2.0
    """Half-width, in work-size pixels, of the edge band where alpha is solved for."""
    min_contrast: float = 18.0
    """Least RGB distance between local product and backdrop colours to trust the solve."""
    guided_radius: int = 4
    guided_eps: float = 1e-3
    refit_rounds: int = 2
    """Refits of a smooth backdrop's surface on all pixels found to be backdrop (0: the
    border fit only)."""
    refit_degree: int = 4
    """Polynomial degree of that refit (it sees the whole backdrop, not just the border)."""
    busy_residual: float = 8.0
    """90th percentile of the border's Lab distance to its fitted surface above which a
    backdrop without sharp texture is busy but out of focus (bokeh)."""
    busy_edge_noise: float = 3.0
    """On a busy out-of-focus backdrop, a product edge is this many times sharper than
    the border's 99th-percentile edge (no hysteresis: blurred discs stay out)."""
    busy_edge_weak: float = 0.7
    """Fraction of that threshold down to which a connected edge counts."""
    busy_outline_gap: int = 9
    """Diameter (work pixels) of the closing that bridges gaps in those outlines."""
    busy_sure_fraction: float = 0.3
    """Enclosed interiors at least this fraction of the largest are sure foreground
    (a handle's hole is smaller than the body)."""
    busy_min_outline: float = 0.0005
    """Least area (fraction of the image) of a sharp outline that may be the subject."""
    refit_min_change: float = 2.0
    """A refit that moves the backdrop surface less than this (RGB levels) is not used."""
    grabcut: str = "auto"
    """When the backdrop model's mask is refined with GrabCut: ``"always"``, ``"never"``,
    or ``"auto"`` (only where the backdrop model is unsure; see ``_should_refine``)."""
    grabcut_size: int = 320
    """Longest side at which GrabCut runs."""
    grabcut_iters: int = 3
    grabcut_margin: float = 0.08
    """Margin (fraction of the shorter side) around the mask's box where GrabCut runs."""
    grabcut_remove_smooth: bool = False
    """Whether GrabCut may remove parts of the mask on a smooth backdrop (else only add)."""
    thin_hole: float = 2.5
    """Enclosed holes no wider than this (work pixels, inscribed radius) are filled."""
    grabcut_sure: float = 2.0
    """Inside the eroded mask, a score above ``grabcut_sure * high`` is sure foreground."""
    grabcut_erode: int = 2
    grabcut_confident: float = 0.9
    """``auto`` skips GrabCut on a smooth backdrop when at least this fraction of the
    mask's interior scores above ``grabcut_sure * high``."""
    """Erosion (GrabCut pixels) of the mask before its pixels can be sure foreground."""
    grabcut_min_change: int = 2
    """Disagreements with the backdrop model thinner than this (work pixels) are edge
    resampling, not a correction: the backdrop model's finer edge is kept there."""


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide (float32 in [0, 1])."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    cov_ip = box(guide * src) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def _least_squares(design: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least squares with a few coefficients by the normal equations.

    ``einsum`` and a small solve stay out of the BLAS thread pool, which on a busy
    2-core machine fights OpenCV's threads and doubled remove's wall time.
    """
    gram = np.einsum("ij,ik->jk", design, design) + 1e-9 * np.eye(design.shape[1])
    return np.linalg.solve(gram, np.einsum("ij,i->j", design, values))


_FIT_POINTS = 6000


def _poly_terms(degree: int) -> list[tuple[int, int]]:
    """Exponents (i, j) of the monomials x**i * y**j up to ``degree``."""
    return [(i, d - i) for d in range(degree + 1) for i in range(d, -1, -1)]


def _background_surface(
    img: np.ndarray, border: int, fit: np.ndarray | None = None, degree: int = 2
) -> np.ndarray:
    """Polynomial surface per channel fitted to the backdrop pixels.

    By default a quadratic fitted to the border (robust refit without the worst
    border pixels: a subject touching the edge). ``fit`` (bool HxW) names the
    pixels to fit instead, for a refit on all the backdrop found so far.
    """
    h, w = img.shape[:2]
    if fit is None:
        mask = np.zeros((h, w), bool)
        mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = True, True, True, True
    else:
        mask = fit.copy()
    mask[1::2] = False  # every other row and column is plenty for a few coefficients
    mask[:, 1::2] = False
    ys, xs = np.nonzero(mask)
    if len(ys) > _FIT_POINTS:  # a smooth surface needs a few thousand samples, not all
        step = len(ys) / _FIT_POINTS
        pick = (np.arange(_FIT_POINTS) * step).astype(np.intp)
        ys, xs = ys[pick], xs[pick]
    yn, xn = ys / h - 0.5, xs / w - 0.5
    terms = _poly_terms(degree)
    design = np.stack([xn**i * yn**j for i, j in terms], axis=1)
    gy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    gx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    surface = np.empty_like(img)
    for c in range(3):
        values = img[ys, xs, c]
        coef = _least_squares(design, values)
        # One refit without the worst pixels (a subject touching the edge).
        resid = np.abs(design @ coef - values)
        keep = resid <= np.percentile(resid, 85)
        coef = _least_squares(design[keep], values[keep])
        # sum_j y**j * (sum_i c_ij x**i): one row polynomial per power of y.
        rows = np.zeros((degree + 1, w), np.float32)
        for (i, j), cij in zip(terms, coef, strict=True):
            rows[j] += np.float32(cij) * gx[0] ** i
        powers = np.concatenate([gy**j for j in range(degree + 1)], axis=1)  # h x (degree+1)
        surface[..., c] = powers @ rows
    return surface


class _SmoothBackdrop:
    """Scores pixels against a smooth backdrop surface (the photo's Lab kept once)."""

    def __init__(self, small: np.ndarray, border: int, cfg: MatteConfig) -> None:
        self.img = small.astype(np.float32) / 255.0
        self.lab = cv2.cvtColor(self.img, cv2.COLOR_RGB2LAB)
        self.border, self.cfg = border, cfg

    def surface(self, fit: np.ndarray | None = None, degree: int = 2) -> np.ndarray:
        return np.clip(_background_surface(self.img, self.border, fit, degree), 1e-3, 1.0)

    def distance(self, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lab distance of each pixel to the backdrop ``bg``, allowing for cast shadows.

        A shadow scales the backdrop colour by a gain k < 1 in every channel (on
        white and on coloured paper alike). Each pixel is compared with the shadowed
        backdrop ``k * B`` for the best gain within ``shadow_depth``; the darkening
        used costs ``shadow_weight`` per lightness unit, so deep or coloured changes
        stay foreground. Returns that score and the bare residual (no shadow cost),
        which is near zero on the backdrop whether lit or shadowed.
        """
        cfg = self.cfg
        gain = np.einsum("ijc,ijc->ij", self.img, bg) / np.einsum("ijc,ijc->ij", bg, bg)
        gain = np.clip(gain, 1.0 - cfg.shadow_depth, 1.0)
        shadowed = bg * gain[..., None]
        diff = self.lab - cv2.cvtColor(shadowed, cv2.COLOR_RGB2LAB)
        residual = np.sqrt(np.einsum("ijc,ijc->ij", diff, diff))
        return residual + cfg.shadow_weight * 100.0 * (1.0 - gain), residual


def _ring(shape: tuple[int, ...], border: int) -> np.ndarray:
    ring = np.ones(shape[:2], bool)
    ring[border:-border, border:-border] = False
    return ring


def _is_textured(small: np.ndarray, border: int, cfg: MatteConfig) -> bool:
    """True when the border is busy (wood, fabric): no smooth surface fits it."""
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    return float(np.median(mag[_ring(mag.shape, border)])) > cfg.texture_gradient


def _texture_distance(small: np.ndarray, border: int, cfg: MatteConfig) -> np.ndarray:
    """Distance to the nearest of a few backdrop colours clustered from the border.

    Scaled so that the border's own spread (its 98th percentile) maps to the low
    hysteresis threshold: only colours clearly outside the backdrop's palette
    become foreground.
    """
    blur = cv2.GaussianBlur(small, (0, 0), cfg.texture_blur).astype(np.float32) / 255.0
    lab = cv2.cvtColor(blur, cv2.COLOR_RGB2LAB)
    ring = _ring(lab.shape, border)
    samples = lab[ring][::3].astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)  # deterministic clustering
    k = min(cfg.texture_clusters, len(samples))
    _, _, centres = cv2.kmeans(samples, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    dist = np.full(lab.shape[:2], np.inf, np.float32)
    for centre in centres:
        dist = np.minimum(dist, np.sqrt(((lab - centre) ** 2).sum(axis=-1)))
    spread = max(float(np.percentile(dist[ring], 98)), 1.0)
    return dist * (cfg.low / spread)


def remove_background(rgb: np.ndarray, config: MatteConfig | None = None) -> np.ndarray:
    """Alpha matte (float32 HxW in [0, 1]) of the subject of an RGB uint8 image."""
    cfg = config or MatteConfig()
    h, w = rgb.shape[:2]
    scale = min(1.0, cfg.work_size / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else rgb  # fmt: skip
    small = cv2.GaussianBlur(small, (3, 3), 0)
    model = _backdrop_mask(small, cfg)
    mask = model.mask
    if _should_refine(model, cfg):
        mask = _grabcut_refine(small, model, cfg)
    return _refine(rgb, _drop_specks(_fill_thin_holes(mask, cfg)), scale, cfg)


@dataclass
class _BackdropModel:
    """What the backdrop model found at work size."""

    mask: np.ndarray
    """Hard foreground mask (uint8 0/1)."""
    dist: np.ndarray
    """Score: distance to the backdrop (foreground above ``high``, backdrop below ``low``)."""
    border: int
    textured: bool
    refitted: bool = False
    """The border did not predict the whole smooth backdrop (a hot spot, a strong
    vignette): its surface was refitted, and the mask may hold backdrop patches."""
    sure: np.ndarray | None = None
    """Pixels known to be foreground besides those scoring far above ``high``."""


def _backdrop_mask(small: np.ndarray, cfg: MatteConfig) -> _BackdropModel:
    """Steps 1-3: score against the backdrop model, hysteresis, clean-up, outlines."""
    sh, sw = small.shape[:2]
    border = max(2, round(min(sh, sw) * cfg.border))
    if not _is_textured(small, border, cfg):
        backdrop = _SmoothBackdrop(small, border, cfg)
        bg = backdrop.surface()
        dist, residual = backdrop.distance(bg)
        # A backdrop no smooth surface fits, though without sharp texture (bokeh), is
        # modelled as a textured one.
        fit = np.percentile(residual[_ring(residual.shape, border)], 90)
        if fit <= cfg.busy_residual:
            mask = _hysteresis_mask(dist, cfg)
            mask, dist, residual, refitted = _refit(backdrop, bg, mask, dist, residual)
            mask = _close_outlines(small, residual, mask, border, cfg)
            return _BackdropModel(mask, dist, border, textured=False, refitted=refitted)
    dist = _texture_distance(small, border, cfg)
    # The colour blur spreads the product over its outline by about its sigma.
    size = 2 * round(cfg.texture_blur * cfg.texture_shrink) + 1
    mask = cv2.erode(
        _hysteresis_mask(dist, cfg), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    )
    subject = _sharp_subject(small, border, cfg)
    if subject is None:
        return _BackdropModel(mask, dist, border, textured=True)
    # Out of focus: the sharp subject, not the palette's stray colours.
    return _BackdropModel(subject[0], dist, border, textured=True, sure=subject[1])


def _refit(
    backdrop: _SmoothBackdrop,
    bg: np.ndarray,
    mask: np.ndarray,
    dist: np.ndarray,
    residual: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Refit a smooth backdrop on everything found to be backdrop, not just the border.

    A hot spot or a strong vignette that the border cannot predict is then backdrop
    too. Returns (mask, score, residual, whether the refit was used); a refit that
    moves the surface less than ``refit_min_change`` is not used.
    """
    cfg, border = backdrop.cfg, backdrop.border
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * border + 1, 2 * border + 1))
    refitted = False
    for _ in range(cfg.refit_rounds if mask.any() else 0):
        fit = cv2.dilate(mask, grow) == 0
        if fit.mean() < 0.2:
            break
        refit = backdrop.surface(fit, cfg.refit_degree)
        if float(np.abs(refit - bg).max()) < cfg.refit_min_change / 255.0:
            break  # the border already predicted the whole backdrop
        bg, refitted = refit, True
        dist, residual = backdrop.distance(bg)
        remask = _hysteresis_mask(dist, cfg)
        if np.array_equal(remask, mask):
            break
        mask = remask
    return mask, dist, residual, refitted


def _sharp_subject(
    small: np.ndarray, border: int, cfg: MatteConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Where a busy but out-of-focus backdrop (bokeh) shows a sharp subject.

    Such a backdrop has soft edges only, so the product is what is sharp: edges
    ``busy_edge_noise`` times above the border's own, closed into outlines, away
    from the border. Returns (probable, sure) uint8 masks: the convex hull of those
    outlines, and the eroded interiors they enclose; None when the border itself is
    sharp (wood, fabric) or no sharp outline was found.
    """
    empty = np.zeros(small.shape[:2], np.uint8)
    outline = _sharp_outlines(
        small, empty, border, cfg, cfg.busy_edge_noise, cfg.busy_edge_weak, cfg.busy_outline_gap
    )
    if outline is None:
        return None
    sh, sw = outline.shape
    _, parts, stats, _ = cv2.connectedComponentsWithStats(outline, connectivity=8)
    touching = np.unique(np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]]))
    keep = stats[:, cv2.CC_STAT_AREA] >= cfg.busy_min_outline * sh * sw
    keep[touching] = False
    keep[0] = False
    if not keep.any():
        return None
    edges = keep[parts].astype(np.uint8)
    probable = np.zeros_like(edges)
    hull = cv2.convexHull(cv2.findNonZero(edges))
    cv2.fillConvexPoly(probable, hull, 1)
    labels, enclosed, sizes = _enclosed(edges)
    # The body, not a handle's hole: only interiors near the largest one's size are sure.
    if enclosed.any():
        enclosed &= sizes >= cfg.busy_sure_fraction * sizes[enclosed].max()
    sure = cv2.erode(enclosed[labels].astype(np.uint8),
                     cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))  # fmt: skip
    return probable, sure


def _hysteresis_mask(dist: np.ndarray, cfg: MatteConfig) -> np.ndarray:
    """Hysteresis on the score, morphological clean-up, non-backdrop holes filled."""
    sh, sw = dist.shape
    strong = (dist > cfg.high).astype(np.uint8)
    weak = (dist > cfg.low).astype(np.uint8)
    count, labels = cv2.connectedComponents(weak, connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[strong > 0])] = True
    keep[0] = False
    mask = keep[labels].astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    # Fill holes that do not look like background (speckles inside the product).
    inverse = (1 - mask).astype(np.uint8)
    count, labels = cv2.connectedComponents(inverse, connectivity=4)
    for label in range(1, count):
        region = labels == label
        if dist[region].mean() > cfg.low and region.sum() < 0.01 * sh * sw:
            mask[region] = 1
    return mask


def _should_refine(model: _BackdropModel, cfg: MatteConfig) -> bool:
    """Whether GrabCut refines this mask (``grabcut="auto"``): where the model is unsure.

    A textured backdrop is only approximated by a palette of border colours, so its
    mask is always refined. On a smooth backdrop the mask is refined when less than
    ``grabcut_confident`` of its interior scores far above the threshold (a product
    close to the backdrop colour, found partly by its outline). Measured on the
    tuning generator: refining confident smooth masks changed no figure (IoU equal to
    three decimals) and cost about 80 ms of CPU per photo.
    """
    if cfg.grabcut == "always":
        return True
    if cfg.grabcut == "never" or not model.mask.any():
        return False
    if model.textured or model.refitted:
        return True
    inner = cv2.erode(model.mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))) > 0
    if not inner.any():
        return True
    sure = float((model.dist[inner] > cfg.grabcut_sure * cfg.high).mean())
    return sure < cfg.grabcut_confident


def _grabcut_refine(small: np.ndarray, model: _BackdropModel, cfg: MatteConfig) -> np.ndarray:
    """The backdrop model's mask refined by GrabCut (colour GMMs + graph cut).

    GrabCut runs on the mask's bounding box plus a margin, at ``grabcut_size`` pixels
    per longest image side. Seeds: the margin's outer ring (where the model found no
    subject) is sure background; pixels deep inside the mask whose score is far
    above the threshold are sure foreground; the rest of the mask is probable
    foreground, everything else probable background. Back at work size only its
    corrections at least ``grabcut_min_change`` pixels thick are taken, so the
    model's own edge (finer than GrabCut's grid) stays where the two agree.
    """
    sh, sw = small.shape[:2]
    ys, xs = np.nonzero(model.mask)
    if len(ys) == 0:
        return model.mask
    margin = max(2 * model.border, round(cfg.grabcut_margin * min(sh, sw)))
    y0, y1 = max(0, ys.min() - margin), min(sh, ys.max() + margin + 1)
    x0, x1 = max(0, xs.min() - margin), min(sw, xs.max() + margin + 1)
    gs = min(1.0, cfg.grabcut_size / max(sh, sw))
    ch, cw = y1 - y0, x1 - x0
    size = (max(1, round(cw * gs)), max(1, round(ch * gs)))
    crop = small[y0:y1, x0:x1]
    img = cv2.resize(crop, size, interpolation=cv2.INTER_AREA) if gs < 1 else crop
    mask = cv2.resize(model.mask[y0:y1, x0:x1], size, interpolation=cv2.INTER_NEAREST)
    dist = cv2.resize(model.dist[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    seeds = np.where(mask > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    ring = _ring(seeds.shape, max(1, round(model.border * gs)))
    seeds[ring & (mask == 0)] = cv2.GC_BGD
    if model.textured:
        # The palette was learnt from the image border: it is backdrop by assumption.
        b = model.border
        edge = np.zeros((sh, sw), bool)
        edge[:b], edge[-b:], edge[:, :b], edge[:, -b:] = True, True, True, True
        seeds[cv2.resize(edge[y0:y1, x0:x1].astype(np.uint8), size,
                         interpolation=cv2.INTER_NEAREST) > 0] = cv2.GC_BGD  # fmt: skip
    k = 2 * cfg.grabcut_erode + 1
    inner = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    seeds[(inner > 0) & (dist > cfg.grabcut_sure * cfg.high)] = cv2.GC_FGD
    if model.sure is not None:
        sure = cv2.resize(model.sure[y0:y1, x0:x1], size, interpolation=cv2.INTER_NEAREST)
        seeds[sure > 0] = cv2.GC_FGD
    if not (seeds == cv2.GC_BGD).any() or not (seeds % 2).any():
        return model.mask  # no sure backdrop, or the subject vanished at GrabCut's size
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(img, seeds, None, bgd, fgd, cfg.grabcut_iters, cv2.GC_INIT_WITH_MASK)
    fg = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.float32)
    if gs < 1:
        fg = cv2.resize(fg, (cw, ch), interpolation=cv2.INTER_LINEAR)
    refined = model.mask.copy()
    refined[y0:y1, x0:x1] = fg >= 0.5
    if not (model.textured or model.refitted or cfg.grabcut_remove_smooth):
        refined |= model.mask  # on a smooth backdrop the model's mask is already right
    if cfg.grabcut_min_change > 1:
        change = cv2.bitwise_xor(refined, model.mask)
        kc = cfg.grabcut_min_change
        change = cv2.morphologyEx(change, cv2.MORPH_OPEN, np.ones((kc, kc), np.uint8))
        refined = cv2.bitwise_xor(model.mask, change)
    return refined


def _fill_thin_holes(mask: np.ndarray, cfg: MatteConfig) -> np.ndarray:
    """Fill enclosed background slivers: a true hole (a handle) is wider than a crack."""
    if cfg.thin_hole <= 0:
        return mask
    inverse = (mask == 0).astype(np.uint8)
    count, labels = cv2.connectedComponents(inverse, connectivity=4)
    if count <= 2:
        return mask
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    width = cv2.distanceTransform(inverse, cv2.DIST_L2, 3)
    widest = np.zeros(count, np.float32)
    np.maximum.at(widest, labels.ravel(), width.ravel())
    fill = widest <= cfg.thin_hole
    fill[touching] = False
    fill[0] = False
    if not fill.any():
        return mask
    return np.maximum(mask, fill[labels].astype(np.uint8))


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    """Keep components larger than 0.2% of the image (float32 0/1)."""
    sh, sw = mask.shape[:2]
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    big = np.zeros(count, bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= 0.002 * sh * sw
    return big[labels].astype(np.float32)


def _sharp_outlines(
    small: np.ndarray,
    mask: np.ndarray,
    border: int,
    cfg: MatteConfig,
    noise: float | None = None,
    weak_fraction: float | None = None,
    gap: int | None = None,
) -> np.ndarray | None:
    """Sharp edges (and ``mask``) closed into outlines; None when the border is busy.

    The gradient of the high-pass image keeps steps (a product's outline) and drops
    smooth shading, soft shadows and out-of-focus backdrops. Edges count above
    ``edge_noise`` times the border's own 99th percentile, fainter stretches when
    connected to clear ones; gaps up to ``outline_gap`` are bridged. ``noise``,
    ``weak_fraction`` and ``gap`` override ``edge_noise``, ``edge_weak`` and
    ``outline_gap``.
    """
    f = small.astype(np.float32)
    f = f - cv2.GaussianBlur(f, (0, 0), cfg.edge_scale)
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy).max(axis=-1)
    ring = _ring(mag.shape, border)
    if np.median(mag[ring]) > cfg.smooth_backdrop:
        return None
    noise = cfg.edge_noise if noise is None else noise
    threshold = max(cfg.edge_min, noise * float(np.percentile(mag[ring], 99)))
    # Hysteresis: faint stretches of an outline count when connected to clear ones.
    weak = cfg.edge_weak if weak_fraction is None else weak_fraction
    weak_level = max(cfg.edge_min, weak * threshold)
    weak = ((mag > weak_level) | (mask > 0)).astype(np.uint8)
    count, labels = cv2.connectedComponents(weak, connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[(mag > threshold) | (mask > 0)])] = True
    keep[0] = False
    outline = keep[labels].astype(np.uint8)
    gap = cfg.outline_gap if gap is None else gap
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (gap, gap))
    return cv2.morphologyEx(outline, cv2.MORPH_CLOSE, kernel)


def _enclosed(outline: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regions enclosed by ``outline``: (labels, per-label "enclosed" flags, sizes)."""
    count, labels = cv2.connectedComponents(1 - outline, connectivity=4)
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed = np.ones(count, bool)
    enclosed[touching] = False
    enclosed[0] = False  # label 0 is the outline itself
    return labels, enclosed, np.bincount(labels.ravel(), minlength=count)


def _close_outlines(
    small: np.ndarray, residual: np.ndarray, mask: np.ndarray, border: int, cfg: MatteConfig
) -> np.ndarray:
    """Add regions enclosed by sharp edges whose colour is not quite the backdrop's.

    A product close to the backdrop colour (white on white, blue on blue) gives
    a weak colour difference but still a sharp outline, while a cast shadow has
    soft edges. Sharp edges plus the colour mask are closed into outlines; an
    enclosed region is product when its mean residual to the (possibly shadowed)
    backdrop is above the noise (a true hole, such as a mug handle, or a shadow
    enclosed by the product's foot matches the backdrop).
    Skipped on textured backdrops, where edges are everywhere.
    """
    outline = _sharp_outlines(small, mask, border, cfg)
    if outline is None:
        return mask
    labels, product, sizes = _enclosed(outline)
    means = np.bincount(labels.ravel(), weights=residual.ravel(), minlength=len(sizes))
    means /= np.maximum(sizes, 1)
    hole_level = max(
        cfg.hole_dist, cfg.hole_noise * float(residual[_ring(mask.shape, border)].mean())
    )
    product &= means > hole_level
    # The enclosed interiors stop short of the edge by about the closing radius; grow
    # them back by that much (the edge band is solved exactly afterwards).
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    interior = cv2.dilate(product[labels].astype(np.uint8), grow)
    return np.maximum(mask, interior)


def _refine(rgb: np.ndarray, mask: np.ndarray, scale: float, cfg: MatteConfig) -> np.ndarray:
    """Soft alpha at full size from a work-size hard mask.

    In a band around the mask edge, the local product colour F and backdrop
    colour B (including any shadow) are averaged from the sure pixels nearby,
    and alpha is the projection of ``I - B`` on ``F - B`` (compositing model
    ``I = alpha F + (1 - alpha) B``). Where F and B are too alike to trust that,
    the guided-filtered hard mask is used instead.
    """
    h, w = rgb.shape[:2]
    hard = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    band = max(2, round(cfg.band / max(scale, 1e-6)))
    binary = (hard >= 0.5).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    sure_fg = cv2.erode(binary, kernel).astype(np.float32)
    sure_bg = 1.0 - cv2.dilate(binary, kernel).astype(np.float32)
    unknown = (sure_fg == 0) & (sure_bg == 0)
    if not unknown.any():
        return sure_fg
    ys, xs = np.nonzero(unknown)
    pad = 3 * band + 1
    y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
    img = rgb[y0:y1, x0:x1].astype(np.float32)
    size = (2 * pad + 1, 2 * pad + 1)

    def local_mean(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wsum = cv2.boxFilter(weight, -1, size, normalize=False, borderType=cv2.BORDER_REFLECT)
        total = cv2.boxFilter(img * weight[..., None], -1, size, normalize=False,
                              borderType=cv2.BORDER_REFLECT)  # fmt: skip
        return total / np.maximum(wsum, 1e-6)[..., None], wsum

    fg_col, fg_n = local_mean(sure_fg[y0:y1, x0:x1])
    bg_col, bg_n = local_mean(sure_bg[y0:y1, x0:x1])
    fb = fg_col - bg_col
    norm2 = (fb * fb).sum(axis=-1)
    solved = np.clip(((img - bg_col) * fb).sum(axis=-1) / np.maximum(norm2, 1e-6), 0.0, 1.0)
    grey = cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    radius = max(1, round(cfg.guided_radius / max(scale, 1e-6) * 0.5))
    smooth = np.clip(guided_filter(grey, hard[y0:y1, x0:x1], radius, cfg.guided_eps), 0.0, 1.0)
    trusted = (norm2 >= cfg.min_contrast**2) & (fg_n > 0.5) & (bg_n > 0.5)
    alpha = sure_fg
    win = unknown[y0:y1, x0:x1]
    alpha[y0:y1, x0:x1][win] = np.where(trusted, solved, smooth)[win]
    return alpha


def to_rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA uint8 from an RGB image and a float alpha."""
    a = cv2.convertScaleAbs(np.clip(alpha, 0, 1), alpha=255.0)  # rounds, saturates, fast
    return cv2.merge([*cv2.split(np.ascontiguousarray(rgb)), a])
