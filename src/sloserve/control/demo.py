"""The built-in demo repository: ``digits``, trained and registered on first use."""

from __future__ import annotations

import tempfile
from pathlib import Path

from sloserve.control.registration import RegisterOptions, Registrar, RegistrationProgress
from sloserve.profiling.profiler import ProfileSettings
from sloserve.registry.db import RegistryDB
from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits
from sloserve.types import ModelName
from sloserve.variant import Task

DEMO_MODEL = ModelName("digits")
DEMO_PROFILE = ProfileSettings(seconds_per_batch=0.25)


def demo_repository_root(home: Path) -> Path:
    return home / "repository"


async def ensure_demo_repository(home: Path, db: RegistryDB, progress: RegistrationProgress) -> Path:
    """Return the demo repository, training and registering ``digits`` first if needed.

    A registration cut short last time is resumed, not started over.
    """
    root = demo_repository_root(home)
    root.mkdir(parents=True, exist_ok=True)
    repository = ModelRepository(root)
    row = db.model(DEMO_MODEL)
    if row is not None and row.state == "ready" and DEMO_MODEL in repository.names():
        return root
    with tempfile.TemporaryDirectory(prefix="sloserve-demo-") as tmp:
        progress.step("Training the digits MLP on scikit-learn's bundled digits data (no downloads)")
        report = build_digits(ModelRepository(Path(tmp)), DEMO_MODEL)
        progress.step(
            f"digits trained in {report.train_s:.1f} s: held-out accuracy {report.accuracy:.3f} "
            f"on {report.n_validation} images; registering its variants"
        )
        options = RegisterOptions(validation=report.validation_path, task=Task.CLASSIFICATION, replace=row is None)
        registrar = Registrar(repository, db, profile_settings=DEMO_PROFILE, progress=progress)
        await registrar.register(report.model_path, DEMO_MODEL, options)
    return root
