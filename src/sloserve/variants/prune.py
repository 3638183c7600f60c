"""pruned-50/75/90: remove hidden units of dense layer chains, then zero the smallest weights left.

Structured pruning makes the graph really smaller. A *link* is a hidden
dimension between two dense layers: layer ``i`` (``MatMul`` + optional bias
``Add``, as skl2onnx writes MLPs, or ``Gemm``) whose output goes, through
elementwise activations only (Relu, Tanh, Sigmoid, ...), into nothing but the
data input of layer ``i+1``. Hidden unit ``j`` of a link is the output column
``j`` of ``W_i``, entry ``j`` of ``b_i`` and input row ``j`` of ``W_{i+1}``;
removing it changes nothing else in the graph. Each link keeps the
``1 - fraction`` of its units with the largest L2 norm over those weights.
When calibration data exists, layer ``i+1`` is then refit by ridge least
squares to reproduce the reference's output of that layer from the kept units
(on the calibration rows plus noisy copies of them, fixed seed): the removed
units' average contribution moves into the bias, their correlation with kept
units into the weights. Without calibration data the rows are just cut.

Dimensions no link can shrink (the first layer's inputs, the last layer's
outputs, dense layers outside any chain) are pruned by magnitude instead: each
dense weight matrix ends with at least ``fraction`` of its original entries
removed or zeroed, structure first, the smallest remaining weights zeroed to
make up the rest. Zeroed weights keep the graph's shape (onnxruntime has no
sparse dense kernels): they shrink compressed size, not latency.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import NodeProto, helper, numpy_helper

from sloserve.variants.base import (
    Array,
    Built,
    Recipe,
    RecipeInput,
    RecipeSkipped,
    calibration_rows,
    load_reference,
    perturbed,
    run_model,
    save_model,
    verify,
)

ACTIVATIONS: Final = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "Elu",
        "Selu",
        "Celu",
        "Tanh",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Softplus",
        "Softsign",
        "Gelu",
        "Mish",
        "ThresholdedRelu",
        "Identity",
    }
)
"""Single-input elementwise operators: a hidden unit passes through them on its own."""
RIDGE: Final = 1e-4
"""Ridge strength of the refit, relative to the mean feature variance."""
NOISE: Final = 0.1
"""Noisy copies of the calibration rows: gaussian noise of this many feature standard deviations."""
MIN_COPIES: Final = 1
MAX_COPIES: Final = 15
ROWS_PER_UNIT: Final = 4
"""Enough copies that the refit has this many rows per hidden unit (within the bounds above)."""


@dataclass
class _Dense:
    """One dense layer: ``y = x @ W (+ b)`` with W stored as ``[in, out]`` or, for Gemm transB, ``[out, in]``."""

    node: NodeProto
    weight: str
    out_axis: int
    output: str
    """The layer's result: the bias Add's output, or the MatMul/Gemm output."""
    bias: str | None = None
    scale: float = 1.0
    """Gemm ``alpha``: ``y = alpha * x @ W + beta * C``."""
    bias_scale: float = 1.0
    """Gemm ``beta`` (1 for a bias Add)."""


@dataclass
class _Link:
    first: _Dense
    second: _Dense
    hidden: str
    """The tensor ``second`` consumes: ``first``'s output after the activations."""


class _Graph:
    """The reference's weights as numpy arrays, edited in place, and the node wiring."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.weights: dict[str, Array] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.consumers: dict[str, list[NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def only_consumer(self, tensor: str) -> NodeProto | None:
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.outputs:
            return None
        return users[0]

    def private_weight(self, name: str, rank: int) -> bool:
        """``name`` is a float initializer of this rank used by exactly one node."""
        array = self.weights.get(name)
        return (
            array is not None
            and array.ndim == rank
            and array.dtype == np.float32
            and len(self.consumers.get(name, [])) == 1
            and name not in self.outputs
        )


def hidden_widths(model: onnx.ModelProto) -> list[int]:
    """The width of every prunable hidden dimension of ``model`` (empty when it has no dense chain)."""
    graph = _Graph(model)
    return [graph.weights[link.first.weight].shape[link.first.out_axis] for link in _links(graph, _dense_layers(graph))]


def pruning_recipe(fraction: float) -> Recipe:
    """The recipe that prunes ``fraction`` (0 < fraction < 1) of every link's hidden units."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"pruning fraction must be in (0, 1), got {fraction}")

    def build_pruned(source: RecipeInput, path: Path) -> Built:
        return _prune(source, path, fraction)

    build_pruned.__name__ = f"build_pruned_{round(fraction * 100)}"
    return build_pruned


def _prune(source: RecipeInput, path: Path, fraction: float) -> Built:
    model = load_reference(source)
    graph = _Graph(model)
    layers = _dense_layers(graph)
    links = _links(graph, layers)
    if not links:
        present = ", ".join(sorted({n.op_type for n in model.graph.node}))
        raise RecipeSkipped(
            "no chain of dense layers to prune: structured pruning needs two MatMul/Gemm layers with constant "
            f"weights joined only by elementwise activations (the graph has {present})"
        )
    before = {d.weight: graph.weights[d.weight].size for d in layers}
    bias_before = sum(graph.weights[d.bias].size for d in layers if d.bias)
    hidden_before = [graph.weights[link.first.weight].shape[link.first.out_axis] for link in links]
    fit = _fitting_data(source, model, graph, links, max(hidden_before)) if calibration_rows(source) > 0 else None
    refit = 0
    for link in links:
        hidden = None if fit is None else _run_exposing(model, graph, fit[0], [link.hidden])[link.hidden]
        target = None if fit is None else fit[1][link.second.output]
        refit += _prune_link(graph, link, fraction, hidden, target)
    zeroed = {d.weight: _zero_smallest(graph, d.weight, before[d.weight], fraction) for d in layers}
    _write_weights(model, graph)
    save_model(model, path)
    verify(source, path)

    total = sum(before.values())
    kept = sum(graph.weights[d.weight].size for d in layers)
    details: dict[str, Any] = {
        "sparsity": fraction,
        "hidden_units_reference": hidden_before,
        "hidden_units": [graph.weights[link.first.weight].shape[link.first.out_axis] for link in links],
        "structured_fraction": round((total - kept) / total, 4),
        "unstructured_fraction": round(sum(zeroed.values()) / total, 4),
        "dense_weights_reference": total,
        "dense_weights": kept,
        "nonzero_dense_weights": int(sum(np.count_nonzero(graph.weights[d.weight]) for d in layers)),
        "dense_biases_reference": bias_before,
        "dense_biases": sum(graph.weights[d.bias].size for d in layers if d.bias),
        "refit_layers": refit,
        "fit_rows": 0 if fit is None else len(next(iter(fit[0].values()))),
    }
    return Built(details=details)


def _fitting_data(
    source: RecipeInput, model: onnx.ModelProto, graph: _Graph, links: list[_Link], widest: int
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Inputs to refit on (calibration plus noisy copies) and the reference's pre-activations on them."""
    rows = calibration_rows(source)
    copies = min(MAX_COPIES, max(MIN_COPIES, math.ceil(ROWS_PER_UNIT * widest / rows) - 1))
    inputs = perturbed(source.calibration, copies, NOISE, source.seed)
    targets = _run_exposing(model, graph, inputs, [link.second.output for link in links])
    return inputs, targets


def _dense_layers(graph: _Graph) -> list[_Dense]:
    layers: list[_Dense] = []
    for node in graph.model.graph.node:
        if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMul" and graph.private_weight(node.input[1], 2):
            layer = _Dense(node, node.input[1], out_axis=1, output=node.output[0])
            add = graph.only_consumer(node.output[0])
            if add is not None and add.op_type == "Add" and len(add.input) == 2:
                other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
                out_units = graph.weights[layer.weight].shape[1]
                if graph.private_weight(other, graph.weights.get(other, np.empty(0)).ndim) and _is_row_bias(
                    graph.weights[other], out_units
                ):
                    layer.bias, layer.output = other, add.output[0]
            layers.append(layer)
        elif node.op_type == "Gemm" and not attrs.get("transA", 0) and graph.private_weight(node.input[1], 2):
            layer = _Dense(
                node,
                node.input[1],
                out_axis=0 if attrs.get("transB", 0) else 1,
                output=node.output[0],
                scale=float(attrs.get("alpha", 1.0)),
                bias_scale=float(attrs.get("beta", 1.0)),
            )
            if len(node.input) > 2 and node.input[2]:
                c = node.input[2]
                out_units = graph.weights[layer.weight].shape[layer.out_axis]
                array = graph.weights.get(c)
                if array is None or not graph.private_weight(c, array.ndim) or not _is_row_bias(array, out_units):
                    continue  # a bias we cannot slice: leave the layer alone
                layer.bias = c
            layers.append(layer)
    return layers


def _is_row_bias(bias: Array, units: int) -> bool:
    """A bias broadcast along the last axis: shape ``[units]``/``[1, units]``, or one value for all units."""
    if bias.dtype != np.float32:
        return False
    if bias.size == 1:
        return True
    return bias.ndim >= 1 and bias.shape[-1] == units and bias.size == units


def _links(graph: _Graph, layers: list[_Dense]) -> list[_Link]:
    by_node = {id(layer.node): layer for layer in layers}
    links: list[_Link] = []
    for layer in layers:
        tensor = layer.output
        while True:
            user = graph.only_consumer(tensor)
            if user is None:
                break
            if user.op_type in ACTIVATIONS and user.domain in ("", "ai.onnx") and len(user.input) == 1:
                tensor = user.output[0]
                continue
            second = by_node.get(id(user))
            first_units = graph.weights[layer.weight].shape[layer.out_axis]
            if second is not None and user.input[0] == tensor:
                second_in = graph.weights[second.weight].shape[1 - second.out_axis]
                if second_in == first_units and first_units > 1:
                    links.append(_Link(layer, second, tensor))
            break
    return links


def _run_exposing(
    model: onnx.ModelProto, graph: _Graph, inputs: dict[str, Array], tensors: list[str]
) -> dict[str, Array]:
    """Run ``model`` with ``graph``'s current weights, returning the named intermediate tensors."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    _write_weights(probe, graph)
    declared = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(tensors) if t not in declared
    )
    with tempfile.TemporaryDirectory(prefix="sloserve-prune-") as scratch:
        probe_path = Path(scratch) / "probe.onnx"
        save_model(probe, probe_path)
        outputs = run_model(probe_path, inputs)
    return {t: outputs[t] for t in tensors}


def _prune_link(graph: _Graph, link: _Link, fraction: float, hidden: Array | None, target: Array | None) -> int:
    """Remove the link's weakest hidden units; return 1 when the next layer was refit to make up for them."""
    first, second = link.first, link.second
    w1 = graph.weights[first.weight]
    w2 = graph.weights[second.weight]
    in_axis2 = 1 - second.out_axis
    units = w1.shape[first.out_axis]
    keep_count = max(1, round(units * (1.0 - fraction)))
    if keep_count >= units:
        return 0
    norms = np.sum(np.square(w1.astype(np.float64)), axis=1 - first.out_axis)
    norms += np.sum(np.square(w2.astype(np.float64)), axis=second.out_axis)
    b1 = graph.weights[first.bias] if first.bias else None
    if b1 is not None and b1.size == units:
        norms += np.square(b1.astype(np.float64).reshape(-1))
    # The largest norms survive; ties go to the lower index, so the result is deterministic.
    keep = np.sort(np.argsort(-norms, kind="stable")[:keep_count])
    graph.weights[first.weight] = np.ascontiguousarray(np.take(w1, keep, axis=first.out_axis))
    if first.bias and b1 is not None and b1.size == units:
        graph.weights[first.bias] = np.ascontiguousarray(np.take(b1, keep, axis=-1))
    if hidden is None or target is None:
        graph.weights[second.weight] = np.ascontiguousarray(np.take(w2, keep, axis=in_axis2))
        return 0
    _refit(graph, second, hidden[..., keep], target)
    return 1


def _refit(graph: _Graph, layer: _Dense, features: Array, target: Array) -> None:
    """Least squares (ridge) for the layer's weights and bias: ``features @ W + b ~ target``.

    ``target`` is the reference's output of this layer, so the pruned layer
    reproduces it as closely as the kept units allow (the removed units' mean
    goes into the bias, their correlation with the kept ones into the weights).
    """
    x = features.reshape(-1, features.shape[-1]).astype(np.float64)
    y = target.reshape(-1, target.shape[-1]).astype(np.float64)
    intercept = layer.bias is not None or layer.node.op_type == "Gemm"
    x_mean = x.mean(axis=0) if intercept else np.zeros(x.shape[1])
    y_mean = y.mean(axis=0) if intercept else np.zeros(y.shape[1])
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    ridge = RIDGE * (np.trace(gram) / gram.shape[0] or 1.0)
    weights = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), xc.T @ yc)  # [kept, out]
    stored = weights if layer.out_axis == 1 else weights.T
    graph.weights[layer.weight] = np.ascontiguousarray((stored / layer.scale).astype(np.float32))
    if intercept:
        _set_bias(graph, layer, y_mean - x_mean @ weights)


def _set_bias(graph: _Graph, layer: _Dense, value: Array) -> None:
    """Make the layer add ``value`` (one number per output unit), creating a Gemm ``C`` if needed."""
    if layer.bias is None:
        name = f"{layer.node.name or layer.weight}_bias"
        while name in graph.weights:
            name += "_"
        if len(layer.node.input) < 3:
            layer.node.input.append(name)
        else:
            layer.node.input[2] = name
        graph.consumers[name] = [layer.node]
        layer.bias = name
        shape: tuple[int, ...] = (value.shape[0],)
    else:
        old = graph.weights[layer.bias]
        shape = old.shape if old.size == value.shape[0] else (value.shape[0],)
    scale = layer.bias_scale if layer.bias_scale != 0 else 1.0
    graph.weights[layer.bias] = (value / scale).astype(np.float32).reshape(shape)


def _zero_smallest(graph: _Graph, name: str, original_size: int, fraction: float) -> int:
    """Zero the smallest weights until ``fraction`` of the original entries are gone or zero."""
    weights = graph.weights[name]
    removed = original_size - weights.size
    target = math.ceil(fraction * original_size - 1e-9)
    count = min(max(0, target - removed), weights.size)
    if count == 0:
        return 0
    flat = weights.reshape(-1).copy()
    order = np.argsort(np.abs(flat), kind="stable")
    flat[order[:count]] = 0.0
    graph.weights[name] = flat.reshape(weights.shape)
    return count


def _write_weights(model: onnx.ModelProto, graph: _Graph) -> None:
    """Store ``graph``'s current weights (and biases it added) in ``model``; drop stale shapes."""
    existing = {init.name for init in model.graph.initializer}
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(graph.weights[init.name], init.name))
    model.graph.initializer.extend(
        numpy_helper.from_array(array, name) for name, array in graph.weights.items() if name not in existing
    )
    for node, source in zip(model.graph.node, graph.model.graph.node, strict=True):  # Gemm biases added
        if list(node.input) != list(source.input):
            del node.input[:]
            node.input.extend(source.input)
    del model.graph.value_info[:]  # intermediate shapes changed; onnxruntime infers them again
