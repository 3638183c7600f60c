"""Reference models for the recipe tests: the digits MLP (skl2onnx, MatMul+Add) and a Gemm MLP.

Both are built once per test session (each takes about a second); every test
writes its variants under its own temporary folder.
"""

from __future__ import annotations

import numpy as np
import pytest

from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits, build_wide_mlp, wide_mlp_config
from sloserve.runtime.graph import config_from_signature, read_signature
from sloserve.variant import Task
from tests.unit.variants.kit import GEMM_IN, GEMM_LAYERS, GEMM_OUT, GEMM_WIDTH, Outcome, Reference, build_all


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    report = build_digits(ModelRepository(tmp_path_factory.mktemp("digits-repo")))
    validation = np.load(report.validation_path)
    config = config_from_signature("digits", *read_signature(report.model_path), max_batch_size=64)
    return Reference(report.model_path, config, validation["X"], validation["y"], Task.CLASSIFICATION)


@pytest.fixture(scope="session")
def gemm_mlp(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    path = tmp_path_factory.mktemp("gemm") / "model.onnx"
    build_wide_mlp(path, in_features=GEMM_IN, width=GEMM_WIDTH, layers=GEMM_LAYERS, out_features=GEMM_OUT, seed=3)
    x = np.random.default_rng(7).standard_normal((300, GEMM_IN)).astype(np.float32)
    config = wide_mlp_config("gemm_mlp", in_features=GEMM_IN, out_features=GEMM_OUT)
    return Reference(path, config, x, None, Task.REGRESSION)


@pytest.fixture(scope="session")
def digits_variants(digits: Reference, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every recipe run once on digits, calibrated on its whole validation split."""
    return build_all(digits, tmp_path_factory.mktemp("digits-variants"))


@pytest.fixture(scope="session")
def gemm_variants(gemm_mlp: Reference, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    return build_all(gemm_mlp, tmp_path_factory.mktemp("gemm-variants"))
