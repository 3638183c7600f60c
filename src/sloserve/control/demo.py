"""The built-in demo repository: ``digits``, trained on first use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sloserve.errors import InvalidArgumentError
from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits

DEMO_MODEL = "digits"


def demo_repository_root(home: Path) -> Path:
    return home / "repository"


def ensure_demo_repository(home: Path, progress: Callable[[str], None]) -> Path:
    """Return the demo repository, training and adding ``digits`` first if it is missing."""
    root = demo_repository_root(home)
    root.mkdir(parents=True, exist_ok=True)
    repository = ModelRepository(root)
    if DEMO_MODEL not in repository.names():
        progress("Training the digits MLP on scikit-learn's bundled digits data (no downloads)")
        try:
            report = build_digits(repository, DEMO_MODEL)
        except InvalidArgumentError:
            if DEMO_MODEL not in repository.names():
                raise
            return root  # another process built it at the same moment
        progress(
            f"digits ready: held-out accuracy {report.accuracy:.3f} on {report.n_validation} images, "
            f"trained in {report.train_s:.1f} s"
        )
    return root
