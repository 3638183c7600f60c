"""The recipe interface: how a variant is made from a registered model.

A recipe is a function ``recipe(source, path) -> Built``: it reads the reference
FP32 ONNX file named by ``source`` and writes one variant's ONNX file at
``path``. The variant has exactly the reference's inputs and outputs (names,
datatypes, shapes; FP32 I/O even when it computes in FP16 or INT8), so any
variant can serve any request for the model.

Outcomes, as the registration workflow records them:

- returns :class:`Built`: the variant is at ``path`` (checked against the
  reference config and loaded in onnxruntime by the recipe itself);
- raises :class:`RecipeSkipped`: the recipe does not apply to this model (the
  message says why), e.g. static quantization without calibration data;
- raises anything else: the recipe failed; the caller records the message and
  goes on with the next recipe.

Recipes are deterministic: ``seed`` fixes every random choice, so building
twice gives the same variant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig
from sloserve.runtime.graph import check_config
from sloserve.runtime.session import OnnxSession
from sloserve.variant import Task

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class RecipeInput:
    reference: Path
    """The reference FP32 ONNX file."""
    config: ModelConfig
    """Its signature: inputs, outputs, max_batch_size."""
    calibration: Mapping[str, Array]
    """Validation inputs by input name (may be small, e.g. 450 rows, or empty)."""
    task: Task
    seed: int = 0


@dataclass(frozen=True)
class Built:
    meant_for: str = "cpu"
    """Hardware the variant targets: "cpu", or "gpu" for fp16."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the recipe did, for people and dashboards, e.g. ``{"sparsity": 0.5}``."""


class RecipeSkipped(Exception):
    """The recipe does not apply to this model; the message says why."""


Recipe = Callable[[RecipeInput, Path], Built]


def load_reference(source: RecipeInput) -> onnx.ModelProto:
    """The reference graph with its weights; a file that does not parse is InvalidArgumentError."""
    try:
        model = onnx.load(str(source.reference))
    except FileNotFoundError:
        raise InvalidArgumentError(f"reference model {source.reference} does not exist") from None
    except Exception as exc:  # protobuf DecodeError, OSError, ...
        raise InvalidArgumentError(f"reference model {source.reference} is not a loadable ONNX model: {exc}") from None
    if not model.HasField("graph") or not model.graph.output:
        raise InvalidArgumentError(f"reference model {source.reference} holds no graph")
    return model


def calibration_rows(source: RecipeInput) -> int:
    """How many calibration rows there are (0 when none); every input must have as many."""
    if not source.calibration:
        return 0
    wanted = {t.name for t in source.config.inputs}
    if set(source.calibration) != wanted:
        raise InvalidArgumentError(
            f"calibration inputs {sorted(source.calibration)} do not match the model's inputs {sorted(wanted)}"
        )
    counts = {len(a) for a in source.calibration.values()}
    if len(counts) != 1:
        raise InvalidArgumentError(f"calibration inputs have different row counts: {sorted(counts)}")
    return counts.pop()


def run_model(path: Path, inputs: Mapping[str, Array], batch: int = 256) -> dict[str, Array]:
    """Every output of the model at ``path`` on ``inputs``, computed in chunks of ``batch`` rows."""
    session = OnnxSession(path)
    names = [t.name for t in session.outputs]
    rows = len(next(iter(inputs.values())))
    parts: dict[str, list[Array]] = {name: [] for name in names}
    for start in range(0, rows, batch):
        chunk = {k: v[start : start + batch] for k, v in inputs.items()}
        for name, value in session.run(chunk, names).items():
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def perturbed(calibration: Mapping[str, Array], copies: int, noise: float, seed: int) -> dict[str, Array]:
    """The calibration rows, then ``copies`` noisy copies of them, for fitting on a teacher's outputs.

    Floating-point inputs get gaussian noise of ``noise`` times each feature's
    standard deviation over the rows (so constant features stay constant);
    other inputs are repeated as they are. Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, Array] = {}
    for name in sorted(calibration):
        array = np.asarray(calibration[name])
        parts = [array]
        if array.dtype.kind == "f" and len(array) > 0:
            std = array.std(axis=0, keepdims=True)
            for _ in range(copies):
                parts.append((array + rng.standard_normal(array.shape) * noise * std).astype(array.dtype))
        else:
            parts.extend(array for _ in range(copies))
        out[name] = np.ascontiguousarray(np.concatenate(parts))
    return out


def save_model(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def verify(source: RecipeInput, path: Path) -> None:
    """The variant at ``path`` has the reference's signature, loads, and runs on a few rows."""
    check_config(source.config, path)
    session = OnnxSession(path)
    if calibration_rows(source) > 0:
        sample = {name: np.ascontiguousarray(array[:2]) for name, array in source.calibration.items()}
        session.run(sample, [t.name for t in source.config.outputs])
