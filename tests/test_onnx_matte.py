"""OnnxMatteModel with a tiny ONNX graph built here (no weights are shipped)."""

from __future__ import annotations

import io
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from bria_dagster.engine.onnx_matte import OnnxMatteModel
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import EngineError

SIZE = 128


def _save(model: onnx.ModelProto, path) -> str:
    model.ir_version = 9  # readable by every onnxruntime >= 1.18
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _distance_from_white_model(path, *, size: int = SIZE, logits: bool = True) -> str:
    """Soft mask = sigmoid(gain * (mean |x - white| - offset)): far from white = product.

    Input is normalised with mean 0.5 / std 1, so white (1.0) arrives as 0.5. The
    offset 0.3 is above the darkening of the synthetic contact shadow (at most 25%).
    Returns logits (sigmoid left to the wrapper) or probabilities.
    """
    const = [
        helper.make_tensor("white", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("offset", TensorProto.FLOAT, [], [0.3]),
        helper.make_tensor("gain", TensorProto.FLOAT, [], [60.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "white"], ["diff"]),
        helper.make_node("Abs", ["diff"], ["absdiff"]),
        helper.make_node("ReduceMean", ["absdiff", "axes"], ["dist"], keepdims=1),
        helper.make_node("Sub", ["dist", "offset"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit" if logits else "pre"]),
    ]
    if not logits:
        nodes.append(helper.make_node("Sigmoid", ["pre"], ["logit"]))
    graph = helper.make_graph(
        nodes,
        "distance_from_white",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [1, 1, size, size])],
        initializer=const,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _identity_model(path, out_shape: list[int]) -> str:
    """Output = the input reshaped to out_shape (to test output-shape checks)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _photo(seed: int):
    jpg, alpha = make_product_photo("white_studio", seed, (256, 256))
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")), alpha


def _iou(alpha: np.ndarray, gt: np.ndarray) -> float:
    pred, truth = alpha >= 0.5, gt >= 0.5
    return float((pred & truth).sum() / (pred | truth).sum())


@pytest.mark.parametrize("logits", [True, False])
def test_predicts_the_product_of_a_studio_photo(tmp_path, logits):
    path = _distance_from_white_model(tmp_path / "m.onnx", logits=logits)
    model = OnnxMatteModel(path, input_size=(SIZE, SIZE))
    for seed in (1, 2, 3, 4):
        rgb, gt = _photo(seed)
        alpha = model.predict(rgb)
        assert alpha.shape == gt.shape and alpha.dtype == np.float32
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0
        assert _iou(alpha, gt) > 0.9


def test_refine_false_returns_the_resized_model_output(tmp_path):
    path = _distance_from_white_model(tmp_path / "m.onnx")
    rgb, gt = _photo(3)
    raw = OnnxMatteModel(path, input_size=(SIZE, SIZE), refine=False).predict(rgb)
    refined = OnnxMatteModel(path, input_size=(SIZE, SIZE)).predict(rgb)
    assert raw.shape == refined.shape == gt.shape
    assert not np.array_equal(raw, refined)  # the guided filter changed the edges
    assert _iou(raw, gt) > 0.9
    assert _iou(refined, gt) >= _iou(raw, gt) - 0.01


def test_missing_file_is_a_clear_engine_error(tmp_path):
    with pytest.raises(EngineError, match=r"not found: .*nowhere\.onnx"):
        OnnxMatteModel(tmp_path / "nowhere.onnx")


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf model")
    with pytest.raises(EngineError, match="not a loadable ONNX model"):
        OnnxMatteModel(bad)


def test_input_size_that_disagrees_with_the_model_is_refused(tmp_path):
    path = _distance_from_white_model(tmp_path / "m.onnx")
    with pytest.raises(EngineError, match=r"input_size=\(1024, 1024\).*input_size=\(128, 128\)"):
        OnnxMatteModel(path)  # default 1024x1024, the model takes 128x128


def test_unknown_input_name_and_output_index_are_refused(tmp_path):
    path = _distance_from_white_model(tmp_path / "m.onnx")
    with pytest.raises(EngineError, match="no input 'image'"):
        OnnxMatteModel(path, input_size=(SIZE, SIZE), input_name="image")
    with pytest.raises(EngineError, match="output_index=3"):
        OnnxMatteModel(path, input_size=(SIZE, SIZE), output_index=3)


def test_a_three_channel_output_is_an_unexpected_shape(tmp_path):
    path = _identity_model(tmp_path / "id.onnx", [1, 3, SIZE, SIZE])
    model = OnnxMatteModel(path, input_size=(SIZE, SIZE))
    with pytest.raises(EngineError, match=r"shape \[1, 3, 128, 128\].*one mask channel"):
        model.predict(_photo(4)[0])


def test_bad_image_and_bad_config_values_are_refused(tmp_path):
    path = _distance_from_white_model(tmp_path / "m.onnx")
    model = OnnxMatteModel(path, input_size=(SIZE, SIZE))
    with pytest.raises(EngineError, match="RGB uint8"):
        model.predict(np.zeros((8, 8), np.uint8))
    with pytest.raises(EngineError, match="std must be non-zero"):
        OnnxMatteModel(path, input_size=(SIZE, SIZE), std=(1.0, 0.0, 1.0))


def test_missing_onnxruntime_names_the_install_command(tmp_path, monkeypatch):
    path = _distance_from_white_model(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(EngineError, match=r"pip install 'bria-dagster\[onnx\]'"):
        OnnxMatteModel(path, input_size=(SIZE, SIZE))
