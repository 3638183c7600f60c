"""measure_accuracy: labels (top-1, R²), fidelity to a reference, and when neither applies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import r2_score as sklearn_r2

from sloserve.errors import InvalidArgumentError
from sloserve.profiling.accuracy import R2_FLOOR, measure_accuracy, predicted_classes
from sloserve.variant import AccuracyKind, Task

Array = np.ndarray[Any, Any]
CLASSIFY = Task.CLASSIFICATION
REGRESS = Task.REGRESSION


def probabilities(classes: list[int], n_classes: int = 4) -> Array:
    out = np.full((len(classes), n_classes), 0.1, dtype=np.float32)
    out[np.arange(len(classes)), classes] = 0.7
    return out


def test_top1_from_the_label_output() -> None:
    outputs = {"label": np.array([0, 1, 2, 3], dtype=np.int64), "probabilities": probabilities([0, 1, 2, 3])}
    labels = np.array([0, 1, 2, 0])
    assert measure_accuracy(outputs, task=CLASSIFY, labels=labels, reference=None) == (0.75, AccuracyKind.TOP1)


def test_the_label_output_wins_over_the_probabilities() -> None:
    # The two disagree on purpose: the label output is what the model answers.
    outputs = {"probabilities": probabilities([3, 3, 3, 3]), "label": np.array([0, 1, 2, 3], dtype=np.int64)}
    labels = np.array([0, 1, 2, 3])
    assert measure_accuracy(outputs, task=CLASSIFY, labels=labels, reference=None) == (1.0, AccuracyKind.TOP1)


def test_top1_from_argmax_without_a_label_output() -> None:
    outputs = {"logits": probabilities([1, 1, 2, 0, 3])}
    labels = np.array([1, 0, 2, 0, 3], dtype=np.int32)
    assert measure_accuracy(outputs, task=CLASSIFY, labels=labels, reference=None) == (0.8, AccuracyKind.TOP1)


def test_string_classes_compare_bytes_with_str() -> None:
    outputs = {"output_label": np.array([b"cat", b"dog", b"cat"], dtype=object)}
    labels = np.array(["cat", "dog", "dog"])
    accuracy, kind = measure_accuracy(outputs, task=CLASSIFY, labels=labels, reference=None)
    assert kind is AccuracyKind.TOP1
    assert accuracy == pytest.approx(2 / 3)


def test_argmax_indices_are_not_compared_with_string_labels() -> None:
    outputs = {"logits": probabilities([0, 1])}
    assert measure_accuracy(outputs, task=CLASSIFY, labels=np.array(["a", "b"]), reference=None) == (None, None)


def test_r2_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    truth = rng.standard_normal(200)
    predicted = truth + 0.3 * rng.standard_normal(200)
    outputs = {"variable": predicted.astype(np.float32).reshape(-1, 1), "other": np.zeros(200, dtype=np.float32)}
    accuracy, kind = measure_accuracy(outputs, task=REGRESS, labels=truth, reference=None)
    assert kind is AccuracyKind.R2
    assert accuracy == pytest.approx(sklearn_r2(truth, predicted.astype(np.float32)), rel=1e-6)


def test_r2_of_a_constant_truth_and_the_floor() -> None:
    flat = np.ones(5)
    assert measure_accuracy({"y": flat.copy()}, task=REGRESS, labels=flat, reference=None) == (1.0, AccuracyKind.R2)
    assert measure_accuracy({"y": flat * 2}, task=REGRESS, labels=flat, reference=None) == (0.0, AccuracyKind.R2)
    truth = np.array([0.0, 1.0, 2.0])
    far = {"y": np.array([100.0, -100.0, 50.0])}
    assert measure_accuracy(far, task=REGRESS, labels=truth, reference=None) == (R2_FLOOR, AccuracyKind.R2)
    nan = {"y": np.array([np.nan, 1.0, 2.0])}
    assert measure_accuracy(nan, task=REGRESS, labels=truth, reference=None) == (R2_FLOOR, AccuracyKind.R2)


def test_regression_labels_must_match_the_output_width() -> None:
    with pytest.raises(InvalidArgumentError, match="values per row"):
        measure_accuracy({"y": np.zeros((4, 2))}, task=REGRESS, labels=np.zeros(4), reference=None)


def test_row_count_mismatch_is_an_error() -> None:
    with pytest.raises(InvalidArgumentError, match="3 rows but there are 4 labels"):
        measure_accuracy({"label": np.zeros(3, dtype=np.int64)}, task=CLASSIFY, labels=np.zeros(4), reference=None)


def test_fidelity_top1_without_labels() -> None:
    reference = {"label": np.array([0, 1, 2, 3], dtype=np.int64), "probabilities": probabilities([0, 1, 2, 3])}
    variant = {"label": np.array([0, 1, 2, 2], dtype=np.int64), "probabilities": probabilities([0, 1, 2, 2])}
    assert measure_accuracy(variant, task=CLASSIFY, labels=None, reference=reference) == (
        0.75,
        AccuracyKind.FIDELITY_TOP1,
    )


def test_fidelity_is_one_minus_relative_l2_error() -> None:
    reference = {"y": np.array([[3.0, 4.0]], dtype=np.float32)}  # norm 5
    variant = {"y": np.array([[3.0, 4.5]], dtype=np.float32)}  # error 0.5
    accuracy, kind = measure_accuracy(variant, task=REGRESS, labels=None, reference=reference)
    assert kind is AccuracyKind.FIDELITY
    assert accuracy == pytest.approx(0.9)
    same = measure_accuracy(reference, task=Task.OTHER, labels=None, reference=reference)
    assert same == (1.0, AccuracyKind.FIDELITY)


def test_fidelity_is_clipped_to_zero_and_survives_nan() -> None:
    reference = {"y": np.array([1.0, 1.0])}
    assert measure_accuracy({"y": np.array([9.0, -9.0])}, task=REGRESS, labels=None, reference=reference) == (
        0.0,
        AccuracyKind.FIDELITY,
    )
    assert measure_accuracy({"y": np.array([np.nan, 1.0])}, task=REGRESS, labels=None, reference=reference) == (
        0.0,
        AccuracyKind.FIDELITY,
    )


def test_fidelity_shape_mismatch_is_an_error() -> None:
    with pytest.raises(InvalidArgumentError, match="reference"):
        measure_accuracy({"y": np.zeros((2, 3))}, task=REGRESS, labels=None, reference={"y": np.zeros((2, 2))})


def test_labels_win_over_the_reference() -> None:
    outputs = {"label": np.array([1, 1], dtype=np.int64)}
    reference = {"label": np.array([1, 1], dtype=np.int64)}
    labels = np.array([1, 0])
    assert measure_accuracy(outputs, task=CLASSIFY, labels=labels, reference=reference) == (0.5, AccuracyKind.TOP1)


def test_other_task_with_labels_uses_the_reference() -> None:
    outputs = {"y": np.array([1.0, 2.0])}
    result = measure_accuracy(outputs, task=Task.OTHER, labels=np.array([0, 1]), reference=outputs)
    assert result == (1.0, AccuracyKind.FIDELITY)


@pytest.mark.parametrize(
    ("outputs", "task", "labels", "reference"),
    [
        pytest.param({"y": np.zeros(3)}, Task.OTHER, np.zeros(3), None, id="other-task-no-reference"),
        pytest.param({"label": np.zeros(3, dtype=np.int64)}, CLASSIFY, None, None, id="nothing-to-compare"),
        pytest.param({"text": np.array([b"a"], dtype=object)}, REGRESS, np.zeros(1), None, id="non-numeric-output"),
        pytest.param(
            {"label": np.zeros(2, dtype=np.int64)},
            Task.OTHER,
            None,
            {"label": np.zeros(2, dtype=np.int64)},
            id="only-integer-outputs-to-compare",
        ),
    ],
)
def test_unknown_when_neither_is_possible(
    outputs: dict[str, Array], task: Task, labels: Array | None, reference: dict[str, Array] | None
) -> None:
    assert measure_accuracy(outputs, task=task, labels=labels, reference=reference) == (None, None)


def test_predicted_classes() -> None:
    assert predicted_classes({"values": np.zeros((2, 3), dtype=np.int64)}) is None
    found = predicted_classes({"scores": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)})
    assert found is not None
    assert found.tolist() == [1, 0]
