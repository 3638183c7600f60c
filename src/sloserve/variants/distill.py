"""distilled: a much smaller MLP trained to imitate the reference (the teacher).

The student is a scikit-learn ``StandardScaler`` + one-hidden-layer
``MLPRegressor``, fit on the teacher's outputs, computed with onnxruntime, over
the calibration inputs and noisy copies of them (gaussian noise scaled per
feature, fixed seed): the teacher labels any input, so the student sees many
more rows than the validation set holds.

- classifier (a label output ``[-1]`` and a probabilities output ``[-1, C]``):
  the student regresses the teacher's log-probabilities (clipped, centred per
  row), i.e. learns its soft targets rather than only its top-1 label; the
  graph then applies Softmax for the probabilities and maps the argmax to the
  teacher's label values.
- regressor (one FP32 output ``[-1]`` or ``[-1, k]``): the student regresses
  the standardized outputs; the graph undoes the standardization.

The student is exported with skl2onnx (``sloserve.runtime.sklearn_convert``)
and rewritten so its inputs and outputs are the reference's, names, datatypes
and shapes. Multi-input models, inputs that are not FP32 ``[-1, n]``, and other
output structures are skipped.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sloserve.model_config import TensorSpec
from sloserve.runtime.sklearn_convert import estimator_to_onnx
from sloserve.variant import Task
from sloserve.variants.base import (
    Array,
    Built,
    RecipeInput,
    RecipeSkipped,
    calibration_rows,
    load_reference,
    perturbed,
    run_model,
    save_model,
    verify,
)
from sloserve.variants.prune import hidden_widths

NOISE: Final = 0.5
"""Noisy copies: gaussian noise of this many feature standard deviations (per feature)."""
COPIES: Final = 10
STUDENT_SHRINK: Final = 4
"""The student's hidden width is the teacher's widest hidden layer divided by this ..."""
STUDENT_MIN: Final = 8
STUDENT_MAX: Final = 64
STUDENT_DEFAULT: Final = 32
"""... within these bounds; the default when the teacher's widths cannot be read."""
LOG_FLOOR: Final = 1e-6
"""Probabilities are clipped here before the log: the student need not chase 1e-30."""
MAX_ITER: Final = 300
_INTEGER_TYPES: Final = {"INT64": np.int64, "INT32": np.int32}
_PREFIX: Final = "student_"


def build_distilled(source: RecipeInput, path: Path) -> Built:
    feature_input = _single_float_input(source)
    classifier = _structure(source)
    rows = calibration_rows(source)
    if rows == 0:
        raise RecipeSkipped("distillation trains on the teacher's outputs over calibration inputs; there are none")
    teacher = load_reference(source)
    widths = hidden_widths(teacher)
    hidden = STUDENT_DEFAULT if not widths else min(STUDENT_MAX, max(STUDENT_MIN, max(widths) // STUDENT_SHRINK))

    inputs = perturbed(source.calibration, COPIES, NOISE, source.seed)
    x = inputs[feature_input.name]
    outputs = run_model(source.reference, inputs)
    exposed = [t.name for t in source.config.outputs]
    if classifier is not None:
        label_spec, probability_spec = classifier
        targets, top1, table = _classifier_targets(outputs, label_spec, probability_spec)
        student = _fit(x, targets, hidden, source.seed)
        graph = _student_graph(student, x.shape[1], targets.shape[1])
        _check_export(graph, student, x)
        model = _classifier_head(graph, teacher, exposed, feature_input, label_spec, probability_spec, table)
    else:
        (output_spec,) = source.config.outputs
        raw = outputs[output_spec.name].astype(np.float64).reshape(len(x), -1)
        y_mean, y_scale = raw.mean(axis=0), raw.std(axis=0)
        y_scale[y_scale == 0] = 1.0
        student = _fit(x, (raw - y_mean) / y_scale, hidden, source.seed)
        graph = _student_graph(student, x.shape[1], raw.shape[1])
        _check_export(graph, student, x)
        model = _regressor_head(graph, teacher, exposed, feature_input, output_spec, y_mean, y_scale)
    save_model(model, path)
    verify(source, path)

    details: dict[str, Any] = {
        "student": "StandardScaler+MLPRegressor",
        "student_hidden": hidden,
        "teacher_hidden": widths,
        "training_rows": len(x),
        "noise": NOISE,
        "copies": COPIES,
    }
    if classifier is not None:
        details["soft_targets"] = "log-probabilities"
        details["train_fidelity_top1"] = round(float(np.mean(student.predict(x).argmax(axis=1) == top1)), 4)
    return Built(details=details)


def _single_float_input(source: RecipeInput) -> TensorSpec:
    inputs = source.config.inputs
    if len(inputs) != 1:
        raise RecipeSkipped(f"distillation handles models with one input; this one has {len(inputs)}")
    (spec,) = inputs
    if spec.datatype != "FP32" or len(spec.shape) != 2 or spec.shape[1] < 1:
        raise RecipeSkipped(
            f"distillation needs an FP32 input of shape [-1, n_features]; {spec.name!r} is "
            f"{spec.datatype} {list(spec.shape)}"
        )
    return spec


def _structure(source: RecipeInput) -> tuple[TensorSpec, TensorSpec] | None:
    """(label, probabilities) for a classifier, None for a regressor; skips what it cannot reproduce."""
    outputs = source.config.outputs
    if source.task is Task.CLASSIFICATION:
        labels = [t for t in outputs if t.datatype in _INTEGER_TYPES and len(t.shape) == 1]
        probabilities = [t for t in outputs if t.datatype == "FP32" and len(t.shape) == 2 and t.shape[1] >= 2]
        if len(outputs) != 2 or len(labels) != 1 or len(probabilities) != 1:
            described = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in outputs)
            raise RecipeSkipped(
                "distillation of a classifier needs exactly an integer label output [-1] and an FP32 "
                f"probabilities output [-1, n_classes]; this model has {described}"
            )
        return labels[0], probabilities[0]
    if source.task is Task.REGRESSION:
        if len(outputs) != 1 or outputs[0].datatype != "FP32" or len(outputs[0].shape) not in (1, 2):
            described = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in outputs)
            raise RecipeSkipped(
                f"distillation of a regressor needs one FP32 output [-1] or [-1, k]; this model has {described}"
            )
        return None
    raise RecipeSkipped(f"distillation needs a classification or regression task, not {source.task.value!r}")


def _classifier_targets(
    outputs: dict[str, Array], label_spec: TensorSpec, probability_spec: TensorSpec
) -> tuple[Array, Array, Array]:
    """Centred log-probabilities, the teacher's top-1 class index, and the label of each class index."""
    probabilities = outputs[probability_spec.name].astype(np.float64)
    labels = outputs[label_spec.name].reshape(-1)
    top = probabilities.argmax(axis=1)
    n_classes = probabilities.shape[1]
    if len(np.unique(top)) < 2:
        raise RecipeSkipped("the teacher predicts a single class on every calibration row: nothing to distill")
    table = np.zeros(n_classes, dtype=_INTEGER_TYPES[label_spec.datatype])
    seen = np.zeros(n_classes, dtype=bool)
    for index in range(n_classes):
        values = np.unique(labels[top == index])
        if len(values) > 1:
            raise RecipeSkipped(
                f"the teacher's {label_spec.name!r} is not a function of the argmax of {probability_spec.name!r}"
            )
        if len(values) == 1:
            table[index], seen[index] = values[0], True
    if not seen.all():
        if not np.array_equal(table[seen], np.flatnonzero(seen)):
            missing = np.flatnonzero(~seen).tolist()
            raise RecipeSkipped(f"the teacher never predicts class indices {missing}, so their labels are unknown")
        table = np.arange(n_classes, dtype=table.dtype)  # labels are the class indices
    logits = np.log(np.clip(probabilities, LOG_FLOOR, 1.0))
    return logits - logits.mean(axis=1, keepdims=True), top, table


def _fit(x: Array, targets: Array, hidden: int, seed: int) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    student = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "mlp",
                MLPRegressor(hidden_layer_sizes=(hidden,), alpha=1e-3, max_iter=MAX_ITER, random_state=seed),
            ),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        student.fit(x, targets[:, 0] if targets.shape[1] == 1 else targets)  # one target: a 1-D y
    return student


def _student_graph(student: Any, n_features: int, n_targets: int) -> onnx.ModelProto:
    """The student as ONNX, output ``[-1, n_targets]`` whatever skl2onnx declares."""
    model = onnx.load_model_from_string(estimator_to_onnx(student, n_features=n_features))
    (output,) = model.graph.output
    # skl2onnx (1.20) reshapes a multi-output MLPRegressor's result to [-1, 1]; reshape to [-1, k].
    output.CopyFrom(helper.make_tensor_value_info(output.name, output.type.tensor_type.elem_type, [None, n_targets]))
    shapes = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.output[0] == output.name and node.input[1] in shapes:
            shapes[node.input[1]].CopyFrom(
                numpy_helper.from_array(np.array([-1, n_targets], dtype=np.int64), node.input[1])
            )
    return model


def _check_export(model: onnx.ModelProto, student: Any, x: Array) -> None:
    """The exported graph computes what scikit-learn computes (a converter slip fails the recipe)."""
    import onnxruntime as ort

    sample = x[:64]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: sample})
    want = student.predict(sample).reshape(len(sample), -1)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-3 * (np.abs(want).max() + 1)):
        raise RuntimeError(f"the exported student disagrees with scikit-learn (shape {got.shape} vs {want.shape})")


def _rename(model: onnx.ModelProto, input_name: str) -> str:
    """Prefix every tensor of the student graph; its input becomes ``input_name``. Returns the output's name."""
    graph = model.graph
    (student_input,) = graph.input
    (student_output,) = graph.output
    mapping = {student_input.name: input_name}

    def renamed(name: str) -> str:
        return name if not name else mapping.get(name, _PREFIX + name)

    for node in graph.node:
        node.input[:] = [renamed(n) for n in node.input]
        node.output[:] = [renamed(n) for n in node.output]
        if node.name:
            node.name = _PREFIX + node.name
    for init in graph.initializer:
        init.name = renamed(init.name)
    del graph.value_info[:]
    return renamed(student_output.name)


def _with_io(
    model: onnx.ModelProto, teacher: onnx.ModelProto, exposed: list[str], nodes: list[onnx.NodeProto]
) -> onnx.ModelProto:
    """The student with the head ``nodes`` and the teacher's declarations of its input and ``exposed`` outputs."""
    graph = model.graph
    graph.node.extend(nodes)
    weights = {init.name for init in teacher.graph.initializer}
    del graph.input[:]
    graph.input.extend(v for v in teacher.graph.input if v.name not in weights)
    declared = {v.name: v for v in teacher.graph.output}
    del graph.output[:]
    graph.output.extend(declared[name] for name in exposed)
    graph.name = f"{teacher.graph.name or 'model'}_distilled"
    onnx.checker.check_model(model)
    return model


def _classifier_head(
    model: onnx.ModelProto,
    teacher: onnx.ModelProto,
    exposed: list[str],
    feature_input: TensorSpec,
    label_spec: TensorSpec,
    probability_spec: TensorSpec,
    table: Array,
) -> onnx.ModelProto:
    logits = _rename(model, feature_input.name)
    index, table_name = _PREFIX + "top1", _PREFIX + "labels"
    model.graph.initializer.append(numpy_helper.from_array(table, table_name))
    nodes = [
        helper.make_node("Softmax", [logits], [probability_spec.name], axis=-1, name=_PREFIX + "softmax"),
        helper.make_node("ArgMax", [logits], [index], axis=1, keepdims=0, name=_PREFIX + "argmax"),
        helper.make_node("Gather", [table_name, index], [label_spec.name], axis=0, name=_PREFIX + "label"),
    ]
    return _with_io(model, teacher, exposed, nodes)


def _regressor_head(
    model: onnx.ModelProto,
    teacher: onnx.ModelProto,
    exposed: list[str],
    feature_input: TensorSpec,
    output_spec: TensorSpec,
    mean: Array,
    scale: Array,
) -> onnx.ModelProto:
    raw = _rename(model, feature_input.name)
    names = {k: _PREFIX + k for k in ("scale", "mean", "scaled", "shape", "restored")}
    graph = model.graph
    shape = [-1] if len(output_spec.shape) == 1 else [-1, len(mean)]
    graph.initializer.extend(
        [
            numpy_helper.from_array(scale.astype(np.float32), names["scale"]),
            numpy_helper.from_array(mean.astype(np.float32), names["mean"]),
            numpy_helper.from_array(np.array(shape, dtype=np.int64), names["shape"]),
        ]
    )
    nodes = [
        helper.make_node("Mul", [raw, names["scale"]], [names["scaled"]], name=_PREFIX + "unscale"),
        helper.make_node("Add", [names["scaled"], names["mean"]], [names["restored"]], name=_PREFIX + "uncentre"),
        helper.make_node("Reshape", [names["restored"], names["shape"]], [output_spec.name], name=_PREFIX + "shape"),
    ]
    return _with_io(model, teacher, exposed, nodes)
