"""fp32: the reference graph after every onnxruntime graph optimization, saved as the artifact.

onnxruntime fuses and folds the graph at ``ORT_ENABLE_ALL`` (constant folding,
MatMul+Add into Gemm, activation fusions, layout transforms) and writes the
result through ``optimized_model_filepath``. The saved graph may use
onnxruntime's own contrib operators and layouts chosen for this CPU, so it is
meant for onnxruntime on this kind of machine; the numbers are those of the
reference up to floating-point reassociation.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from sloserve.variants.base import Built, RecipeInput, load_reference, verify


def build_fp32(source: RecipeInput, path: Path) -> Built:
    load_reference(source)  # a clear error for a file that is not ONNX at all
    path.parent.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    ort.InferenceSession(str(source.reference), sess_options=options, providers=["CPUExecutionProvider"])
    verify(source, path)
    return Built(details={"graph_optimization": "ORT_ENABLE_ALL", "execution_provider": "CPUExecutionProvider"})
