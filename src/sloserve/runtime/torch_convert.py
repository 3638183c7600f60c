"""PyTorch modules to ONNX (the optional ``torch`` extra: ``pip install 'sloserve[torch]'``).

A PyTorch model is registered as a file written by ``torch.save`` holding a dict
``{"model": module, "example_input": tensor}`` (or a tuple of tensors for several
inputs). It is exported with the batch dimension dynamic, inputs named ``input``
(``input_0``, ``input_1``, ... for several) and outputs ``output`` (``output_0``, ...).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

from sloserve.errors import InvalidArgumentError

TORCH_OPSET = 17
_FORMAT = "a torch.save'd dict {'model': module, 'example_input': tensor or tuple of tensors}"


def is_torch_file(path: Path) -> bool:
    """``torch.save`` writes a zip archive with a ``data.pkl`` record."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


def convert_torch_file(path: Path) -> bytes:
    try:
        import torch
    except ImportError:
        raise InvalidArgumentError(
            f"{path} is a PyTorch file; install the torch extra to register it: pip install 'sloserve[torch]'"
        ) from None
    try:
        saved: Any = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InvalidArgumentError(f"{path} could not be read with torch.load: {exc}") from None
    if not isinstance(saved, dict) or "model" not in saved or "example_input" not in saved:
        raise InvalidArgumentError(f"{path} must hold {_FORMAT}; got {type(saved).__name__}")
    module, example = saved["model"], saved["example_input"]
    if not isinstance(module, torch.nn.Module):
        raise InvalidArgumentError(f"{path}: 'model' is a {type(module).__name__}, not a torch.nn.Module")
    examples = tuple(example) if isinstance(example, tuple | list) else (example,)
    if not examples or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in examples):
        raise InvalidArgumentError(f"{path}: 'example_input' must be a tensor (or tuple of tensors) with a batch dim")
    module.eval()
    with torch.no_grad():
        produced = module(*examples)
    outputs = len(produced) if isinstance(produced, tuple | list) else 1
    inputs, output_names = _names("input", len(examples)), _names("output", outputs)
    batch = {name: {0: "batch"} for name in (*inputs, *output_names)}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                examples,
                buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object too
                input_names=inputs,
                output_names=output_names,
                dynamic_axes=batch,
                opset_version=TORCH_OPSET,
                dynamo=False,
            )
    except Exception as exc:
        raise InvalidArgumentError(f"{path}: the module could not be exported to ONNX: {exc}") from None
    return buffer.getvalue()
