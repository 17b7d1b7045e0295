"""Optional neural matte from a user-supplied ONNX segmentation model.

Works with the common salient-object / background-removal exports (RMBG-1.4,
U2-Net, IS-Net and the like): one image input shaped ``1x3xHxW`` (float32,
NCHW) and an output shaped ``1x1xHxW`` (or ``1xHxW`` / ``HxW``) holding either
probabilities or logits. No weights are shipped or downloaded: pass the path
of a model file you have. ``onnxruntime`` is imported only when a model is
loaded (install it with ``pip install 'bria-dagster[onnx]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from bria_dagster.engine.matte import guided_filter
from bria_dagster.errors import EngineError

__all__ = ["OnnxMatteModel"]

_INSTALL_HINT = "pip install 'bria-dagster[onnx]'"


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError(
            f"the ONNX matte needs onnxruntime, which is not installed; run: {_INSTALL_HINT}"
        ) from exc
    return onnxruntime


class OnnxMatteModel:
    """Alpha mattes from an ONNX model with a ``1x3xHxW`` input and ``1x1xHxW`` output.

    ``mean``/``std`` normalise RGB scaled to [0, 1] (``(x - mean) / std``);
    RMBG-1.4 uses the defaults, U2-Net/IS-Net exports usually want ImageNet
    statistics. ``apply_sigmoid`` is ``True``, ``False`` or ``"auto"`` (apply it
    when the output leaves [0, 1], i.e. the model returns logits).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        input_size: tuple[int, int] = (1024, 1024),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        input_name: str | None = None,
        output_index: int = 0,
        apply_sigmoid: bool | Literal["auto"] = "auto",
        refine: bool = True,
        guided_radius: int = 4,
        guided_eps: float = 1e-3,
    ) -> None:
        self.path = Path(path)
        if len(input_size) != 2 or min(input_size) < 1:
            raise EngineError(
                f"input_size must be (width, height) in pixels, got {input_size!r} for {self.path}"
            )
        if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
            raise EngineError(
                f"mean and std need three values each and std must be non-zero; "
                f"got mean={tuple(mean)!r} std={tuple(std)!r}"
            )
        if apply_sigmoid not in (True, False, "auto"):
            raise EngineError(f"apply_sigmoid must be True, False or 'auto', got {apply_sigmoid!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self.output_index = output_index
        self.apply_sigmoid = apply_sigmoid
        self.refine = refine
        self.guided_radius = guided_radius
        self.guided_eps = guided_eps
        self._session = self._load(input_name)

    def _load(self, input_name: str | None) -> Any:
        ort = _import_onnxruntime()
        if not self.path.is_file():
            raise EngineError(
                f"ONNX model file not found: {self.path}; pass the path of a .onnx export "
                "(no weights are shipped or downloaded)"
            )
        try:
            session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EngineError(
                f"{self.path} is not a loadable ONNX model ({type(exc).__name__}: {exc})"
            ) from exc
        inputs = session.get_inputs()
        names = [i.name for i in inputs]
        if input_name is None:
            if len(inputs) != 1:
                raise EngineError(
                    f"{self.path} has {len(inputs)} inputs {names}; pass input_name= to pick one"
                )
            input_name = names[0]
        elif input_name not in names:
            raise EngineError(f"{self.path} has no input {input_name!r}; its inputs are {names}")
        spec = inputs[names.index(input_name)]
        shape = list(spec.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise EngineError(
                f"input {input_name!r} of {self.path} has shape {shape}; "
                "expected 1x3xHxW (NCHW RGB)"
            )
        width, height = self.input_size
        fixed_h, fixed_w = shape[2], shape[3]
        if (isinstance(fixed_h, int) and fixed_h != height) or (
            isinstance(fixed_w, int) and fixed_w != width
        ):
            raise EngineError(
                f"input_size={self.input_size} (width, height) does not match the model input "
                f"{fixed_w}x{fixed_h} of {self.path}; pass input_size=({fixed_w}, {fixed_h})"
            )
        outputs = session.get_outputs()
        if not -len(outputs) <= self.output_index < len(outputs):
            raise EngineError(
                f"output_index={self.output_index} but {self.path} has {len(outputs)} output(s)"
            )
        self.input_name = input_name
        return session

    def _to_mask(self, raw: np.ndarray) -> np.ndarray:
        out = np.asarray(raw, dtype=np.float32)
        width, height = self.input_size
        if not 2 <= out.ndim <= 4 or int(np.prod(out.shape[:-2])) != 1 or min(out.shape) < 1:
            raise EngineError(
                f"output {self.output_index} of {self.path} has shape {list(out.shape)}; "
                f"expected 1x1x{height}x{width} (one mask channel)"
            )
        squeezed = out.reshape(out.shape[-2:])
        if not np.isfinite(squeezed).all():
            raise EngineError(f"output {self.output_index} of {self.path} has NaN or inf values")
        logits = self.apply_sigmoid is True or (
            self.apply_sigmoid == "auto" and (squeezed.min() < 0.0 or squeezed.max() > 1.0)
        )
        if logits:
            squeezed = 1.0 / (1.0 + np.exp(-np.clip(squeezed, -60.0, 60.0)))
        return squeezed

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Alpha (float32 HxW in [0, 1]) for an RGB uint8 ``HxWx3`` image."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise EngineError(
                f"predict needs an RGB uint8 HxWx3 array, got dtype {rgb.dtype} shape {rgb.shape}"
            )
        h, w = rgb.shape[:2]
        resized = cv2.resize(rgb, self.input_size, interpolation=cv2.INTER_LINEAR)
        x = resized.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        x = ((x - self.mean) / self.std).astype(np.float32)
        try:
            outputs = self._session.run(None, {self.input_name: x})
        except Exception as exc:
            raise EngineError(
                f"running {self.path} failed ({type(exc).__name__}: {exc}); check input_size, "
                "mean and std against the model's export"
            ) from exc
        mask = self._to_mask(outputs[self.output_index])
        alpha = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.refine:
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
            radius = max(1, round(self.guided_radius * max(h, w) / 1024))
            alpha = guided_filter(grey, alpha.astype(np.float32), radius, self.guided_eps)
        return np.clip(alpha, 0.0, 1.0).astype(np.float32)
