"""Variant families: registry profiles, JSON files, the synthetic generator, default SLO classes."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from sloserve.errors import InvalidArgumentError, NotFoundError
from sloserve.policy.selection import Slo
from sloserve.registry.db import RegistryDB
from sloserve.sim.family import Family, default_classes, from_json, from_registry, make_variant, synthetic
from sloserve.types import ModelName, VariantId
from sloserve.variant import AccuracyKind, LatencyStats, Task, VariantProfile, VariantRecord, VariantStatus


def profile(intercept: float, per_row: float, accuracy: float, load_ms: float = 150.0) -> VariantProfile:
    return VariantProfile(
        latency_ms={b: LatencyStats(intercept + per_row * b, 0.0, 0.0) for b in (1, 8, 32)},
        latency_intercept_ms=intercept,
        latency_per_row_ms=per_row,
        best_batch=32,
        throughput_sps=32 / (intercept + per_row * 32) * 1000,
        accuracy=accuracy,
        accuracy_kind=AccuracyKind.TOP1,
        memory_mb=50.0,
        size_bytes=1000,
        load_ms=load_ms,
        flops_per_row=1,
        parameters=1,
        cost_cpu_s_per_1k=(intercept + per_row * 32) / 32,
    )


def register(tmp_path: Path) -> tuple[Path, Path]:
    db_path, repo = tmp_path / "home" / "registry.sqlite3", tmp_path / "repo"
    repo.mkdir()
    with RegistryDB(db_path, repo) as db:
        model = ModelName("digits")
        db.begin_registration(model, task=Task.CLASSIFICATION, source="x", validation=None, replace=False)
        for variant, p in (("fp32", profile(0.4, 0.08, 0.97)), ("int8", profile(0.3, 0.03, 0.95))):
            db.record_variant(VariantRecord(model, VariantId(variant), variant, VariantStatus.READY, profile=p))
        db.record_variant(VariantRecord(model, VariantId("fp16"), "fp16", VariantStatus.FAILED, reason="no"))
        db.finish_registration(model)
    return db_path, repo


def test_a_registered_models_ready_variants_come_with_their_profiles(tmp_path: Path) -> None:
    db_path, repo = register(tmp_path)
    family = from_registry(db_path, repo, "digits")
    assert family.model == "digits"
    assert [v.id for v in family.variants] == ["fp32", "int8"]  # the failed one is left out
    fp32 = family.variants[0]
    assert (fp32.intercept_ms, fp32.per_row_ms, fp32.accuracy, fp32.load_ms) == (0.4, 0.08, 0.97, 150.0)
    assert fp32.max_batch == 32 and fp32.best_batch == 32
    assert fp32.capacity_rps == pytest.approx(32 / (0.4 + 0.08 * 32) * 1000)
    assert fp32.latency_ms(8) == pytest.approx(0.4 + 0.64)


def test_an_unknown_model_or_a_missing_registry_is_not_found(tmp_path: Path) -> None:
    db_path, repo = register(tmp_path)
    with pytest.raises(NotFoundError, match="'nope' is not registered"):
        from_registry(db_path, repo, "nope")
    with pytest.raises(NotFoundError, match="no registry database"):
        from_registry(tmp_path / "elsewhere.sqlite3", repo, "digits")


def test_a_json_family(tmp_path: Path) -> None:
    path = tmp_path / "fam.json"
    path.write_text(
        json.dumps(
            {
                "model": "toy",
                "variants": [
                    {"id": "a", "accuracy": 0.9, "intercept_ms": 1, "per_row_ms": 0.5, "max_batch": 8},
                    {
                        "id": "b",
                        "accuracy": None,
                        "intercept_ms": 2,
                        "per_row_ms": 0,
                        "cost_cpu_s_per_1k": 7,
                        "best_batch": 4,
                        "load_ms": 300,
                    },
                ],
            }
        )
    )
    family = from_json(path)
    a, b = family.variants
    assert family.model == "toy"
    assert (a.best_batch, a.max_batch, a.cost_cpu_s_per_1k) == (8, 8, pytest.approx((1 + 4) / 8))
    assert (b.accuracy, b.cost_cpu_s_per_1k, b.best_batch, b.load_ms) == (None, 7.0, 4, 300.0)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([{"id": "a", "accuracy": 0.9, "intercept_ms": 1, "per_row_ms": 0.5}]))
    assert from_json(plain).model == "plain"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "non-empty list"),
        ('[{"id": "a", "per_row_ms": 1}]', "missing 'intercept_ms'"),
        ('[{"id": "a", "intercept_ms": "x", "per_row_ms": 1}]', "intercept_ms must be a number"),
        ('[{"id": "a", "intercept_ms": 1, "per_row_ms": 1, "speed": 3}]', "unknown field"),
        ('[{"id": "a", "intercept_ms": 0, "per_row_ms": 0}]', "latency must be positive"),
        ('[{"id": "a", "intercept_ms": 1, "per_row_ms": 1, "max_batch": 0}]', "max_batch"),
        ('[{"id": "a", "intercept_ms": 1, "per_row_ms": 1, "best_batch": 64}]', "best_batch"),
        ('[{"id": "a", "intercept_ms": 1, "per_row_ms": 1, "accuracy": 2}]', "at most 1"),
        (
            '[{"id": "a", "intercept_ms": 1, "per_row_ms": 1}, {"id": "a", "intercept_ms": 1, "per_row_ms": 1}]',
            "unique",
        ),
    ],
)
def test_bad_json_families_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "fam.json"
    path.write_text(content)
    with pytest.raises(InvalidArgumentError, match=message):
        from_json(path)


def test_the_synthetic_family_is_a_frontier() -> None:
    family = synthetic(8)
    variants = family.variants
    assert [v.id for v in variants] == [f"syn-{i}" for i in range(8)]
    for cheaper, dearer in itertools.pairwise(variants):
        assert cheaper.accuracy is not None and dearer.accuracy is not None
        assert cheaper.accuracy < dearer.accuracy
        assert cheaper.cost_cpu_s_per_1k < dearer.cost_cpu_s_per_1k
        assert cheaper.latency_ms(1) < dearer.latency_ms(1)
        assert cheaper.capacity_rps > dearer.capacity_rps
    assert synthetic(8) == family
    assert len(synthetic(1).variants) == 1
    with pytest.raises(InvalidArgumentError):
        synthetic(0)


def test_default_classes_come_from_the_profiles() -> None:
    family = Family(
        "m",
        (
            make_variant("a", 0.8, 1.0, 0.5),
            make_variant("b", 0.9, 2.0, 1.0),
            make_variant("c", 0.95, 4.0, 2.0),
        ),
    )
    tight, loose = default_classes(family)
    assert tight.slo == Slo(6.0, None)
    assert loose.slo == Slo(24.0, 0.9)
    assert tight.share == loose.share == 0.5
    no_accuracy = Family("m", (make_variant("a", None, 1.0, 0.5),))
    (only,) = default_classes(no_accuracy)
    assert only.slo.min_accuracy is None and math.isclose(only.slo.latency_ms or 0, 6.0)
