"""Shared by the recipe tests: reference models and ways to compare a variant with them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sloserve.model_config import ModelConfig
from sloserve.variant import Task
from sloserve.variants import RECIPES, Built, RecipeInput, RecipeSkipped

Array = np.ndarray[Any, Any]

GEMM_IN, GEMM_WIDTH, GEMM_LAYERS, GEMM_OUT = 16, 32, 3, 4


@dataclass(frozen=True)
class Reference:
    path: Path
    config: ModelConfig
    x: Array
    """Validation inputs (the calibration data)."""
    y: Array | None
    """Validation labels, for classifiers."""
    task: Task

    def source(self, calibration: Mapping[str, Array] | None = None, seed: int = 0) -> RecipeInput:
        data = {"input": self.x} if calibration is None else calibration
        return RecipeInput(self.path, self.config, data, self.task, seed)


def predict(path: Path, x: Array) -> dict[str, Array]:
    """Every output of the ONNX file at ``path``, computed by a plain onnxruntime session."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


def relative_error(have: Array, want: Array) -> float:
    return float(np.linalg.norm(have - want) / np.linalg.norm(want))


@dataclass(frozen=True)
class Outcome:
    """What one recipe did to one reference: built (``built`` set) or skipped (``skipped`` set)."""

    path: Path
    built: Built | None = None
    skipped: str | None = None


def build_all(reference: Reference, folder: Path) -> dict[str, Outcome]:
    """Run every recipe on ``reference`` (its validation inputs as calibration), writing under ``folder``."""
    outcomes: dict[str, Outcome] = {}
    for name, recipe in RECIPES.items():
        path = folder / name / "model.onnx"
        try:
            outcomes[name] = Outcome(path, built=recipe(reference.source(), path))
        except RecipeSkipped as skipped:
            outcomes[name] = Outcome(path, skipped=str(skipped))
    return outcomes
