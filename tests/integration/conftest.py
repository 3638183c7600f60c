from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits
from tests.integration.serverkit import ServerThread, write_echo_model


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    build_digits(ModelRepository(root))
    write_echo_model(root)
    return root


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[ServerThread]:
    running = ServerThread(repository, max_body_mb=1.0).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def digits_reference(repository: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(repository / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def digits_x(repository: Path) -> np.ndarray[Any, Any]:
    return np.load(repository / "digits" / "validation.npz")["X"].astype(np.float32)
