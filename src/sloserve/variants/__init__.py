"""Variant recipes: ONNX graph transforms that make faster or smaller versions of a model.

``RECIPES`` maps a variant id to its recipe (see :mod:`sloserve.variants.base`
for the contract); the registration workflow runs ``DEFAULT_RECIPES`` in order
and records each outcome: built, skipped (with the reason) or failed.

=============  ================================================================
fp32           onnxruntime's full graph optimizations, saved (the baseline)
int8-dynamic   int8 weights, activations quantized per batch; needs no data
int8-static    QDQ int8 weights and activations, calibrated on validation data
fp16           half-precision weights and arithmetic, FP32 I/O; meant for GPUs
pruned-50/75/  that fraction of hidden units removed from dense chains (next
pruned-90      layer refit on calibration data), the rest of the weights
               magnitude-pruned to the same sparsity
distilled      a small MLP trained on the reference's outputs
=============  ================================================================

Modules are imported lazily by the recipes themselves where a library is slow
to import (scikit-learn, skl2onnx, onnxconverter-common).
"""

from __future__ import annotations

from typing import Final

from sloserve.variants.base import Built, Recipe, RecipeInput, RecipeSkipped
from sloserve.variants.distill import build_distilled
from sloserve.variants.fp16 import build_fp16
from sloserve.variants.fp32 import build_fp32
from sloserve.variants.prune import pruning_recipe
from sloserve.variants.quantize import build_int8_dynamic, build_int8_static

RECIPES: Final[dict[str, Recipe]] = {
    "fp32": build_fp32,
    "int8-dynamic": build_int8_dynamic,
    "int8-static": build_int8_static,
    "fp16": build_fp16,
    "pruned-50": pruning_recipe(0.5),
    "pruned-75": pruning_recipe(0.75),
    "pruned-90": pruning_recipe(0.9),
    "distilled": build_distilled,
}
"""Every recipe by variant id, in the order they are built."""

DEFAULT_RECIPES: Final[tuple[str, ...]] = tuple(RECIPES)
"""The variant ids a registration builds when none are named: all of them."""

__all__ = ["DEFAULT_RECIPES", "RECIPES", "Built", "Recipe", "RecipeInput", "RecipeSkipped"]
