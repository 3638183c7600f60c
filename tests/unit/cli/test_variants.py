"""The variants table a registration ends with (``sloserve register``, ``sloserve variants``)."""

from __future__ import annotations

import pytest

from sloserve.cli.variants import print_variants
from sloserve.types import ModelName, VariantId
from sloserve.variant import VariantRecord, VariantStatus

WHY = (
    "no chain of dense layers to prune: structured pruning needs two MatMul/Gemm layers with constant weights "
    "joined only by elementwise activations (the graph has TreeEnsembleClassifier[x])"
)


def test_why_a_variant_was_skipped_or_failed_is_one_line_under_the_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a cell the reason wrapped to a column of single words, twenty lines a variant on 120 columns."""
    monkeypatch.setenv("COLUMNS", "120")
    records = [
        VariantRecord(ModelName("bc"), VariantId("pruned-50"), "pruned-50", VariantStatus.SKIPPED, WHY),
        VariantRecord(ModelName("bc"), VariantId("fp16"), "fp16", VariantStatus.FAILED, "converter crashed"),
    ]
    print_variants("bc", records)
    out = capsys.readouterr().out
    assert f"pruned-50 skipped: {WHY}\n" in out  # whole, on its line, brackets and all
    assert "fp16 failed: converter crashed\n" in out
    assert len(out.splitlines()) < 12
