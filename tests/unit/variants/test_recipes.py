"""Every recipe on two references: the signature is kept, the numbers stay close, builds repeat exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sloserve.errors import InvalidArgumentError
from sloserve.runtime.graph import check_config, read_signature
from sloserve.runtime.session import OnnxSession
from sloserve.variants import DEFAULT_RECIPES, RECIPES, RecipeSkipped
from tests.unit.variants.kit import Outcome, Reference, predict, relative_error

ORDER = ["fp32", "int8-dynamic", "int8-static", "fp16", "pruned-50", "pruned-75", "pruned-90", "distilled"]

# Per recipe on digits, against the reference on its 450 validation rows:
# (largest |probability difference| or None, least top-1 agreement, largest top-1 accuracy drop or None).
# pruned-* and distilled are fit on these same rows; test_prune/test_distill check them on held-out rows.
DIGITS_TOLERANCE: dict[str, tuple[float | None, float, float | None]] = {
    "fp32": (1e-5, 1.0, 0.0),
    "fp16": (1e-2, 0.99, 0.01),
    "int8-dynamic": (None, 0.95, 0.02),
    "int8-static": (None, 0.95, 0.02),
    "pruned-50": (None, 0.95, 0.03),
    "pruned-75": (None, 0.85, 0.10),
    "pruned-90": (None, 0.45, None),
    "distilled": (None, 0.93, 0.05),
}

# Per recipe on the random Gemm MLP, on unseen rows: largest relative L2 error of its output. Random
# weights leave no redundant units, so pruning and distillation lose much more here than on a trained
# model (measured: 0.46/0.54/0.64 and 0.35); these bounds only catch a broken transform.
GEMM_TOLERANCE: dict[str, float] = {
    "fp32": 1e-5,
    "fp16": 1e-2,
    "int8-dynamic": 0.05,
    "int8-static": 0.05,
    "pruned-50": 0.6,
    "pruned-75": 0.7,
    "pruned-90": 0.8,
    "distilled": 0.5,
}


def test_recipes_are_listed_in_build_order() -> None:
    assert list(RECIPES) == ORDER
    assert tuple(ORDER) == DEFAULT_RECIPES


@pytest.mark.parametrize("name", ORDER)
def test_digits_variant_keeps_the_signature_and_runs(
    name: str, digits: Reference, digits_variants: dict[str, Outcome]
) -> None:
    outcome = digits_variants[name]
    assert outcome.built is not None, outcome.skipped
    check_config(digits.config, outcome.path)
    assert read_signature(outcome.path) == read_signature(digits.path)
    out = OnnxSession(outcome.path).run({"input": digits.x[:5]}, ["label", "probabilities"])
    assert (out["label"].dtype, out["label"].shape) == (np.int64, (5,))
    assert (out["probabilities"].dtype, out["probabilities"].shape) == (np.float32, (5, 10))
    assert outcome.built.meant_for == ("gpu" if name == "fp16" else "cpu")


@pytest.mark.parametrize("name", ORDER)
def test_digits_variant_is_within_its_tolerance(
    name: str, digits: Reference, digits_variants: dict[str, Outcome]
) -> None:
    max_difference, min_agreement, max_drop = DIGITS_TOLERANCE[name]
    want = predict(digits.path, digits.x)
    have = predict(digits_variants[name].path, digits.x)
    assert digits.y is not None
    agreement = float(np.mean(have["label"] == want["label"]))
    accuracy = float(np.mean(have["label"] == digits.y))
    teacher = float(np.mean(want["label"] == digits.y))
    assert agreement >= min_agreement, f"{name}: top-1 agreement {agreement:.3f}"
    if max_drop is not None:
        assert accuracy >= teacher - max_drop, f"{name}: accuracy {accuracy:.3f}, reference {teacher:.3f}"
    if max_difference is not None:
        np.testing.assert_allclose(have["probabilities"], want["probabilities"], rtol=0, atol=max_difference)
    np.testing.assert_allclose(have["probabilities"].sum(axis=1), 1.0, rtol=0, atol=2e-3)


@pytest.mark.parametrize("name", ORDER)
def test_gemm_variant_keeps_the_signature_and_tolerance(
    name: str, gemm_mlp: Reference, gemm_variants: dict[str, Outcome]
) -> None:
    outcome = gemm_variants[name]
    assert outcome.built is not None, outcome.skipped
    check_config(gemm_mlp.config, outcome.path)
    assert read_signature(outcome.path) == read_signature(gemm_mlp.path)
    x = np.random.default_rng(11).standard_normal((200, gemm_mlp.x.shape[1])).astype(np.float32)  # unseen rows
    want = predict(gemm_mlp.path, x)["output"]
    have = predict(outcome.path, x)["output"]
    assert have.dtype == np.float32 and have.shape == want.shape
    assert relative_error(have, want) <= GEMM_TOLERANCE[name]


def test_gemm_pruning_error_grows_with_the_fraction(gemm_mlp: Reference, gemm_variants: dict[str, Outcome]) -> None:
    x = np.random.default_rng(11).standard_normal((200, gemm_mlp.x.shape[1])).astype(np.float32)
    want = predict(gemm_mlp.path, x)["output"]
    errors = [relative_error(predict(gemm_variants[f"pruned-{p}"].path, x)["output"], want) for p in (50, 75, 90)]
    assert errors == sorted(errors)
    assert errors[0] < 0.75


@pytest.mark.parametrize("name", ORDER)
def test_building_twice_gives_the_same_file(
    name: str, digits: Reference, digits_variants: dict[str, Outcome], tmp_path: Path
) -> None:
    again = tmp_path / "again.onnx"
    built = RECIPES[name](digits.source(), again)
    assert built == digits_variants[name].built
    assert again.read_bytes() == digits_variants[name].path.read_bytes()


@pytest.mark.parametrize("name", ORDER)
def test_a_corrupt_reference_fails_the_recipe(name: str, digits: Reference, tmp_path: Path) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not protobuf \xff\xff")
    source = Reference(corrupt, digits.config, digits.x, digits.y, digits.task).source()
    with pytest.raises(InvalidArgumentError, match="not a loadable ONNX model") as failure:
        RECIPES[name](source, tmp_path / "variant.onnx")
    assert not isinstance(failure.value, RecipeSkipped)
