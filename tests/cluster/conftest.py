"""A real one-node Ray cluster on 127.0.0.1 for the whole session (2 CPUs, a 100 MB object store, no
dashboard), stopped at the end by process id; the digits model; servers whose replicas are actors on it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from sloserve.cluster.ray.head import LOOPBACK_ENV, LocalRayHead

# Ray reads these when it is imported: the head listens on loopback only, and so must this driver.
os.environ.update(LOOPBACK_ENV)
pytest.importorskip("ray", reason="Ray is not installed: pip install 'sloserve[ray]' (scripts/test.sh does)")

from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalRayHead]:
    temp = Path(tempfile.mkdtemp(prefix="sloray-"))  # short: Ray's socket paths must fit in 107 bytes
    head = LocalRayHead(temp, num_cpus=2, object_store_bytes=100_000_000).start()
    try:
        yield head
    finally:
        head.stop()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    build_digits(ModelRepository(root))
    return root


@pytest.fixture(scope="session")
def digits_reference(repository: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(repository / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def digits_x(repository: Path) -> np.ndarray[Any, Any]:
    return np.load(repository / "digits" / "validation.npz")["X"].astype(np.float32)
