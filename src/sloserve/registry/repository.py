"""The model repository on disk, laid out like Triton's.

::

    ROOT/
      MODEL_NAME/
        config.json          ModelConfig.to_dict(), indented
        1/model.onnx         one folder per version: numeric (added models) or a
        fp32/model.onnx      variant id (registered models: fp32, int8-dynamic, ...)
        validation.npz       optional extra files beside the versions

Writes are atomic: a model folder is assembled and validated under a
temporary dot-folder in ROOT, then renamed into place, so readers see either
the old model or the complete new one, never a half-written folder. Folders
whose name starts with a dot are never listed as models.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from sloserve.errors import InternalError, InvalidArgumentError, NotFoundError, SloserveError
from sloserve.model_config import ModelConfig, parse_model_config, validate_model_name
from sloserve.runtime import graph, sklearn_convert, torch_convert
from sloserve.runtime.session import OnnxSession
from sloserve.types import ModelName, VersionId

CONFIG_FILE: Final = "config.json"
ARTIFACT_FILE: Final = "model.onnx"
FIRST_VERSION: Final = VersionId("1")
_NO_FILES: Final[Mapping[str, bytes | Path]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A validated model: its config and the artifact of every version."""

    config: ModelConfig
    versions: Mapping[VersionId, Path]


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One model folder as the repository index reports it."""

    name: ModelName
    versions: tuple[VersionId, ...]
    state: Literal["ok", "error"]
    reason: str = ""
    """Why the model cannot be loaded; empty when ``state`` is "ok"."""


_VERSION_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _is_version(name: str) -> bool:
    """A version folder name: a number, or a variant id such as ``int8-dynamic``."""
    return bool(name) and not name.startswith(".") and set(name) <= _VERSION_CHARS and len(name) <= 64


def version_order(version: str) -> tuple[int, int, str]:
    """Numeric versions first, in numeric order; then variant ids by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    # ---- reading -------------------------------------------------------

    def names(self) -> list[ModelName]:
        """Model folders, sorted; dot-folders (temporary writes) are skipped."""
        if not self.root.is_dir():
            return []
        return sorted(ModelName(p.name) for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _model_dir(self, name: str) -> Path:
        path = self.root / name
        if not name or name.startswith(".") or "/" in name or os.sep in name or not path.is_dir():
            raise NotFoundError(f"unknown model {name!r} in repository {self.root}")
        return path

    def read_config(self, name: str) -> ModelConfig:
        path = self._model_dir(name) / CONFIG_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidArgumentError(f"{path} is missing") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"{path} cannot be read: {exc}") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{path} is not valid JSON: {exc}") from None
        try:
            config = parse_model_config(raw)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{path}: {exc.message}") from None
        if config.name != name:
            raise InvalidArgumentError(f"{path}: name {config.name!r} does not match the folder name {name!r}")
        return config

    def versions(self, name: str) -> list[VersionId]:
        """Version folders holding a model.onnx (see :func:`version_order`)."""
        model_dir = self._model_dir(name)
        found = [
            VersionId(p.name) for p in model_dir.iterdir() if _is_version(p.name) and (p / ARTIFACT_FILE).is_file()
        ]
        return sorted(found, key=version_order)

    def artifact(self, name: str, version: str) -> Path:
        path = self._model_dir(name) / version / ARTIFACT_FILE
        if not _is_version(version) or not path.is_file():
            raise NotFoundError(f"model {name!r} has no version {version!r} (versions: {self.versions(name)})")
        return path

    def load(self, name: str) -> ModelEntry:
        """Read the config and check it against every version's graph."""
        config = self.read_config(name)
        versions = {v: self.artifact(name, v) for v in self.versions(name)}
        if not versions:
            raise InvalidArgumentError(f"model {name!r} has no version: expected {self.root / name}/1/{ARTIFACT_FILE}")
        for path in versions.values():
            graph.check_config(config, path)
        return ModelEntry(config=config, versions=versions)

    def index(self) -> list[IndexEntry]:
        """Every model folder with its state; a broken model is reported, never raised."""
        entries = []
        for name in self.names():
            try:
                versions = tuple(self.versions(name))
            except (SloserveError, OSError):
                versions = ()
            try:
                self.load(name)
            except (SloserveError, OSError) as exc:
                reason = exc.message if isinstance(exc, SloserveError) else f"{type(exc).__name__}: {exc}"
                entries.append(IndexEntry(name, versions, "error", reason))
            else:
                entries.append(IndexEntry(name, versions, "ok"))
        return entries

    # ---- writing -------------------------------------------------------

    def write_model(
        self,
        config: ModelConfig,
        onnx_model: bytes | Path,
        extra_files: Mapping[str, bytes | Path] = _NO_FILES,
        replace: bool = False,
    ) -> Path:
        """Atomically write a model folder (config, version 1, extra files); return its path.

        The folder is assembled under a temporary dot-folder, validated (the config
        against the graph, and the artifact loaded by onnxruntime), then renamed into
        place. With ``replace`` an existing model is swapped out: renamed aside, the
        new one renamed in, the old one deleted. On any failure the repository is left
        as it was.
        """
        name = validate_model_name(config.name)
        for file_name in extra_files:
            _check_extra_name(file_name)
        final = self.root / name
        self._refuse_existing(final, replace)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=self.root))
        except OSError as exc:
            raise InternalError(f"cannot create a model folder in {self.root}: {exc}") from None
        try:
            self._assemble(staging, config, onnx_model, extra_files)
            artifact = staging / FIRST_VERSION / ARTIFACT_FILE
            graph.check_config(config, artifact)
            OnnxSession(artifact)  # the artifact must load where it will be served
            self._refuse_existing(final, replace)
            self._move_into_place(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def write_version(self, name: str, version: str, onnx_model: bytes | Path) -> Path:
        """Atomically add (or replace) one version of an existing model; return its artifact.

        The artifact is checked against the model's config and loaded by onnxruntime
        in a temporary dot-folder first; a reader sees the old version or the new one.
        """
        if not _is_version(version):
            raise InvalidArgumentError(f"invalid version name {version!r}")
        config = self.read_config(name)
        model_dir = self._model_dir(name)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
        except OSError as exc:
            raise InternalError(f"cannot create a version folder in {model_dir}: {exc}") from None
        try:
            artifact = staging / ARTIFACT_FILE
            try:
                _write(artifact, onnx_model)
                _fsync_dir(staging)
            except OSError as exc:
                raise InternalError(f"cannot write version {version!r} of {name!r}: {exc}") from None
            graph.check_config(config, artifact)
            OnnxSession(artifact)
            final = model_dir / version
            self._move_into_place(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final / ARTIFACT_FILE

    def remove_version(self, name: str, version: str) -> None:
        """Delete a version folder (and any leftover temporary folders of the model)."""
        model_dir = self._model_dir(name)
        if _is_version(version):
            shutil.rmtree(model_dir / version, ignore_errors=True)

    def clean_temporary(self, name: str) -> None:
        """Remove temporary dot-folders a crashed writer may have left in a model folder."""
        model_dir = self._model_dir(name)
        for path in model_dir.iterdir():
            if path.is_dir() and path.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(path, ignore_errors=True)

    def _refuse_existing(self, final: Path, replace: bool) -> None:
        if final.exists() and not replace:
            raise InvalidArgumentError(
                f"model {final.name!r} already exists in {self.root}; use --replace to overwrite it"
            )

    def _assemble(
        self,
        staging: Path,
        config: ModelConfig,
        onnx_model: bytes | Path,
        extra_files: Mapping[str, bytes | Path],
    ) -> None:
        try:
            version_dir = staging / FIRST_VERSION
            version_dir.mkdir()
            _write(version_dir / ARTIFACT_FILE, onnx_model)
            for file_name, content in extra_files.items():
                _write(staging / file_name, content)
            _write(staging / CONFIG_FILE, (json.dumps(config.to_dict(), indent=2) + "\n").encode())
            _fsync_dir(version_dir)
            _fsync_dir(staging)
        except OSError as exc:
            raise InternalError(f"cannot write model {config.name!r} under {staging}: {exc}") from None

    def _move_into_place(self, staging: Path, final: Path) -> None:
        try:
            if not final.exists():
                try:
                    os.rename(staging, final)
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # a concurrent writer won the race
                        self._refuse_existing(final, replace=False)
                    raise
            else:
                aside = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
                os.rename(final, aside)
                try:
                    os.rename(staging, final)
                except OSError:
                    os.rename(aside, final)
                    raise
                shutil.rmtree(aside, ignore_errors=True)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise InternalError(f"cannot move {final.name!r} into {final.parent}: {exc}") from None

    def add_model_file(
        self,
        path: Path,
        name: str,
        *,
        n_features: int | None = None,
        input_datatype: str = "FP32",
        max_batch_size: int = 64,
        replace: bool = False,
    ) -> ModelConfig:
        """Add an ONNX file or a pickled/joblib scikit-learn estimator as ``name`` (version 1)."""
        self._refuse_existing(self.root / validate_model_name(name), replace)
        config, source = convert_model_file(
            path, name, n_features=n_features, input_datatype=input_datatype, max_batch_size=max_batch_size
        )
        self.write_model(config, source, replace=replace)
        return config


def convert_model_file(
    path: Path,
    name: str,
    *,
    n_features: int | None = None,
    input_datatype: str = "FP32",
    max_batch_size: int = 64,
) -> tuple[ModelConfig, bytes | Path]:
    """The config and ONNX model of a model file: ONNX as it is, scikit-learn converted with skl2onnx.

    The config is derived from the graph: batched with ``max_batch_size`` when
    every input and output has a symbolic first dimension, otherwise
    ``max_batch_size`` 0 with the shapes as they are. ``n_features`` and
    ``input_datatype`` apply to scikit-learn estimators only.
    """
    model_name = validate_model_name(name)
    if max_batch_size < 0:
        raise InvalidArgumentError(f"max_batch_size must be >= 0, got {max_batch_size}")
    if not path.is_file():
        raise InvalidArgumentError(f"{path} does not exist or is not a file")
    source: bytes | Path
    if graph.is_onnx(path):
        if n_features is not None:
            raise InvalidArgumentError(f"{path} is an ONNX model; n_features applies only to scikit-learn")
        source = path
    elif torch_convert.is_torch_file(path):
        source = torch_convert.convert_torch_file(path)
    else:
        source = sklearn_convert.convert_file(path, n_features=n_features, input_datatype=input_datatype)
    config = graph.config_from_signature(model_name, *graph.read_signature(source), max_batch_size)
    return config, source


def _check_extra_name(file_name: str) -> None:
    if (
        not file_name
        or file_name.startswith(".")
        or "/" in file_name
        or os.sep in file_name
        or file_name == CONFIG_FILE
        or "." not in file_name
    ):
        raise InvalidArgumentError(
            f"extra file name {file_name!r} must be a plain file name, not hidden, "
            f"not {CONFIG_FILE}, and with an extension (names without one are version folders)"
        )


def _write(path: Path, content: bytes | Path) -> None:
    if isinstance(content, Path):
        if not content.is_file():
            raise InvalidArgumentError(f"{content} does not exist or is not a file")
        shutil.copyfile(content, path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    with open(path, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
