"""Check a decoded request against the model's config, before it is queued."""

from __future__ import annotations

from typing import Any

import numpy as np

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig
from sloserve.protocol.types import InferRequest


def _names(specs: Any) -> str:
    return ", ".join(repr(s.name) for s in specs)


def check_request(
    request: InferRequest, config: ModelConfig, max_rows: int | None = None
) -> tuple[dict[str, np.ndarray[Any, Any]], int, tuple[str, ...]]:
    """Return (inputs by name, batch rows, output names to return) or raise a clear error.

    ``max_rows`` bounds the batch dimension (default: ``max_batch_size``; the data plane
    allows more, up to what scatter-gather splits into best-size batches).
    """
    model = config.name
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    batched = config.max_batch_size > 0
    rows = -1
    for tensor in request.inputs:
        spec = config.input(tensor.name)
        if spec is None:
            raise InvalidArgumentError(
                f"model {model!r} has no input {tensor.name!r}; its inputs are {_names(config.inputs)}"
            )
        if tensor.name in inputs:
            raise InvalidArgumentError(f"input {tensor.name!r} is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidArgumentError(
                f"input {tensor.name!r} of model {model!r} has datatype {spec.datatype}, got {tensor.datatype}"
            )
        shape = tensor.shape
        if len(shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            raise InvalidArgumentError(
                f"input {tensor.name!r} of model {model!r} has shape {list(spec.shape)} "
                f"(-1 is any size), got {list(shape)}"
            )
        if batched:
            if rows not in (-1, shape[0]):
                raise InvalidArgumentError(
                    f"inputs disagree on the batch size: input {tensor.name!r} has {shape[0]} rows, another has {rows}"
                )
            rows = shape[0]
        inputs[tensor.name] = tensor.data
    missing = [s.name for s in config.inputs if s.name not in inputs]
    if missing:
        raise InvalidArgumentError(f"model {model!r} needs input(s) {missing}; the request lacks them")
    limit = config.max_batch_size if max_rows is None else max_rows
    if batched and rows > limit:
        if max_rows is None:
            raise InvalidArgumentError(
                f"batch of {rows} rows is larger than model {model!r}'s max_batch_size {config.max_batch_size}"
            )
        raise InvalidArgumentError(
            f"batch of {rows} rows is larger than the {limit} rows model {model!r} takes in one request "
            f"(it splits requests over its max_batch_size {config.max_batch_size} across replicas)"
        )
    if request.outputs:
        wanted: list[str] = []
        for out in request.outputs:
            if config.output(out.name) is None:
                raise InvalidArgumentError(
                    f"model {model!r} has no output {out.name!r}; its outputs are {_names(config.outputs)}"
                )
            if out.name not in wanted:
                wanted.append(out.name)
        output_names = tuple(wanted)
    else:
        output_names = tuple(s.name for s in config.outputs)
    return inputs, max(rows, 1), output_names
