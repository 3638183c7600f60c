"""The second bundled model: digits with a wide MLP, the benchmark's room for smaller variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from sloserve.registry.repository import ModelRepository
from sloserve.runtime.graph import read_signature
from sloserve.variants.prune import hidden_widths
from tests.unit.variants.kit import Reference, predict


def test_digits_wide_is_accurate_with_the_digits_signature(digits: Reference, tmp_path: Path) -> None:
    from sloserve.runtime.demo import build_digits_wide

    report = build_digits_wide(ModelRepository(tmp_path))
    assert report.name == "digits_wide"
    assert read_signature(report.model_path) == read_signature(digits.path)
    assert hidden_widths(onnx.load(str(report.model_path))) == [512, 256]
    validation = np.load(report.validation_path)
    np.testing.assert_array_equal(validation["X"], digits.x)  # the same held-out split
    accuracy = float(np.mean(predict(report.model_path, validation["X"])["label"] == validation["y"]))
    assert accuracy == report.accuracy >= 0.95
