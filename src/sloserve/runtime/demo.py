"""Models built on this machine, with no downloads: digits classifiers and a wide MLP.

``build_digits`` trains a small scikit-learn MLP on the 8x8 digits bundled with
scikit-learn and registers it, with its held-out split as ``validation.npz``;
``build_digits_wide`` does the same with a much wider MLP (512, 256).
``build_wide_mlp`` writes a compute-heavy random MLP for benchmarks.

The repository is passed in (anything with ``write_model``/``artifact``, i.e. a
``sloserve.registry.ModelRepository``): ``runtime`` sits below ``registry`` in the
layer contract, so the folder layout is written by the registry, in one place.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig, TensorSpec, validate_model_name
from sloserve.runtime.graph import TARGET_OPSET, config_from_signature, read_signature
from sloserve.runtime.session import OnnxSession
from sloserve.runtime.sklearn_convert import INPUT_NAME, estimator_to_onnx
from sloserve.types import ModelName, VersionId

DIGITS_FEATURES = 64
DIGITS_CLASSES = 10
DIGITS_SEED = 0
DIGITS_HELD_OUT = 0.25
VALIDATION_FILE = "validation.npz"


class ModelWriter(Protocol):
    """The part of a model repository the demo builders need."""

    def write_model(
        self,
        config: ModelConfig,
        onnx_model: bytes | Path,
        extra_files: Mapping[str, bytes | Path] = ...,
        replace: bool = False,
    ) -> Path: ...

    def artifact(self, name: ModelName, version: VersionId) -> Path: ...


@dataclass(frozen=True, slots=True)
class DemoReport:
    name: ModelName
    accuracy: float
    """Held-out accuracy of the ONNX file, measured with onnxruntime."""
    train_s: float
    n_train: int
    n_validation: int
    model_dir: Path
    model_path: Path
    validation_path: Path


def _digits_pipeline(hidden_layer_sizes: tuple[int, ...] = (64,)) -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # The scaler is part of the exported graph: clients send raw 0..16 pixel values.
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "mlp",
                MLPClassifier(
                    hidden_layer_sizes=hidden_layer_sizes, alpha=1e-3, max_iter=300, random_state=DIGITS_SEED
                ),
            ),
        ]
    )


def build_digits(repository: ModelWriter, name: str = "digits", *, replace: bool = False) -> DemoReport:
    """Train the digits MLP, register it as ``name`` with its validation split, and score it.

    Deterministic: the split and the training use fixed seeds, so building twice
    gives identical predictions. Takes about a second on one core.
    """
    return _build_digits_model(repository, name, _digits_pipeline(), replace=replace)


def build_digits_wide(repository: ModelWriter, name: str = "digits_wide", *, replace: bool = False) -> DemoReport:
    """Like :func:`build_digits` (same data, split and I/O) with hidden layers of 512 and 256 units.

    About 170k weights instead of 4.7k: a model where smaller variants have room
    to be faster. Takes a few seconds on one core.
    """
    return _build_digits_model(repository, name, _digits_pipeline((512, 256)), replace=replace)


def _build_digits_model(repository: ModelWriter, name: str, pipeline: Any, *, replace: bool) -> DemoReport:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    model_name = validate_model_name(name)
    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        features.astype(np.float32),
        labels.astype(np.int64),
        test_size=DIGITS_HELD_OUT,
        stratify=labels,
        random_state=DIGITS_SEED,
    )
    started = time.perf_counter()
    pipeline.fit(x_train, y_train)
    train_s = time.perf_counter() - started

    onnx_bytes = estimator_to_onnx(pipeline, n_features=DIGITS_FEATURES)
    config = config_from_signature(model_name, *read_signature(onnx_bytes), max_batch_size=64)
    validation = io.BytesIO()
    np.savez(validation, X=x_val, y=y_val)
    model_dir = repository.write_model(config, onnx_bytes, {VALIDATION_FILE: validation.getvalue()}, replace=replace)
    model_path = repository.artifact(model_name, VersionId("1"))
    predicted = OnnxSession(model_path).run({INPUT_NAME: x_val}, ["label"])["label"]
    return DemoReport(
        name=model_name,
        accuracy=float(np.mean(predicted == y_val)),
        train_s=train_s,
        n_train=len(y_train),
        n_validation=len(y_val),
        model_dir=model_dir,
        model_path=model_path,
        validation_path=model_dir / VALIDATION_FILE,
    )


def build_wide_mlp(
    path: Path,
    in_features: int = 256,
    width: int = 2048,
    layers: int = 4,
    out_features: int = 16,
    seed: int = 0,
) -> None:
    """Write a random FP32 MLP (``layers`` x Gemm+Relu, then a Gemm) to ``path``.

    Input ``input`` [-1, in_features], output ``output`` [-1, out_features]. The
    defaults give about 13M parameters (~52 MB), ~26 MFLOP per row. Weights use
    He scaling so activations stay finite through any depth.
    """
    if min(in_features, width, layers, out_features) < 1:
        raise InvalidArgumentError("build_wide_mlp: sizes and layers must be at least 1")
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    previous, fan_in = INPUT_NAME, in_features
    sizes = [width] * layers + [out_features]
    for index, fan_out in enumerate(sizes):
        w = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        b = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01)
        weights += [numpy_helper.from_array(w, f"w{index}"), numpy_helper.from_array(b, f"b{index}")]
        last = index == len(sizes) - 1
        gemm_out = "output" if last else f"gemm{index}"
        nodes.append(helper.make_node("Gemm", [previous, f"w{index}", f"b{index}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{index}"]))
            previous = f"relu{index}"
        fan_in = fan_out
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out_features])],
        initializer=weights,
    )
    opsets = [helper.make_opsetid("", TARGET_OPSET)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="sloserve",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def wide_mlp_config(
    name: str = "wide_mlp", in_features: int = 256, out_features: int = 16, max_batch_size: int = 64
) -> ModelConfig:
    """The config matching :func:`build_wide_mlp` with the same sizes."""
    return ModelConfig(
        name=validate_model_name(name),
        inputs=(TensorSpec(INPUT_NAME, "FP32", (-1, in_features)),),
        outputs=(TensorSpec("output", "FP32", (-1, out_features)),),
        max_batch_size=max_batch_size,
    )
