"""PyTorch modules registered through the torch extra (installed by the test command)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sloserve.errors import InvalidArgumentError
from sloserve.registry.repository import ModelRepository
from sloserve.runtime.session import OnnxSession
from sloserve.runtime.torch_convert import convert_torch_file, is_torch_file


def save_mlp(path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    torch.save({"model": model, "example_input": torch.randn(2, 8)}, path)
    return model


def test_a_saved_module_becomes_a_batched_onnx_model_with_the_same_answers(tmp_path: Path) -> None:
    model = save_mlp(tmp_path / "mlp.pt")
    assert is_torch_file(tmp_path / "mlp.pt")
    config = ModelRepository(tmp_path / "repo").add_model_file(tmp_path / "mlp.pt", "mlp")
    assert [(t.name, t.datatype, t.shape) for t in config.inputs] == [("input", "FP32", (-1, 8))]
    assert [(t.name, t.shape) for t in config.outputs] == [("output", (-1, 3))]
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    got = OnnxSession(tmp_path / "repo" / "mlp" / "1" / "model.onnx").run({"input": x}, ["output"])["output"]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"weights": [1, 2]}, "must hold"),
        ({"model": "not a module", "example_input": torch.zeros(1, 2)}, "not a torch.nn.Module"),
        ({"model": torch.nn.Linear(2, 2), "example_input": 3}, "example_input"),
    ],
)
def test_files_in_the_wrong_shape_are_refused_clearly(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(InvalidArgumentError, match=message):
        convert_torch_file(path)
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(InvalidArgumentError):
        repo.add_model_file(path, "bad")
    assert repo.names() == []
