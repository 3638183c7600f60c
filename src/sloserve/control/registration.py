"""Register once, get a profiled family of variants (INFaaS's model registration).

``register`` converts the model to ONNX, checks the validation set against it,
then for each recipe builds a variant, writes it as a version of the model,
profiles it in a serving worker, and records variant and profile in the registry
database in one transaction. A variant is never visible without its profile.

Crash safety: the database row of the model stays ``registering`` until the end.
A ``register`` of the same model after a crash resumes: recipes already recorded
are kept, version folders with no record (built but not profiled) are removed and
rebuilt, temporary folders are cleaned up.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sloserve.control.validation_set import ValidationSet, infer_task, load_validation, split_validation
from sloserve.errors import InvalidArgumentError, NotFoundError, SloserveError
from sloserve.model_config import ModelConfig, validate_model_name
from sloserve.policy.pareto import pareto_flags
from sloserve.profiling.profiler import ProfileSettings, profile_variant
from sloserve.profiling.profiler import reference_outputs as reference_outputs_of
from sloserve.registry.db import RegistryDB
from sloserve.registry.repository import FIRST_VERSION, ModelRepository, convert_model_file
from sloserve.types import ModelName, VariantId
from sloserve.variant import Task, VariantRecord, VariantStatus
from sloserve.variants import DEFAULT_RECIPES, RECIPES
from sloserve.variants.base import RecipeInput, RecipeSkipped

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.npz"
REFERENCE = VariantId("fp32")


class RegistrationProgress(Protocol):
    def step(self, message: str) -> None: ...

    def recipe_started(self, recipe: str, index: int, total: int) -> None: ...

    def recipe_finished(self, record: VariantRecord) -> None: ...


class _Quiet:
    def step(self, message: str) -> None:
        log.info("%s", message)

    def recipe_started(self, recipe: str, index: int, total: int) -> None:
        log.info("recipe %s (%d/%d)", recipe, index + 1, total)

    def recipe_finished(self, record: VariantRecord) -> None:
        log.info("variant %s: %s %s", record.id, record.status.value, record.reason)


@dataclass(frozen=True, slots=True)
class RegisterOptions:
    validation: Path | None = None
    task: Task | None = None
    recipes: Sequence[str] | None = None
    replace: bool = False
    n_features: int | None = None
    input_datatype: str = "FP32"
    max_batch_size: int = 64


def check_recipes(recipes: Sequence[str] | None) -> list[str]:
    chosen = list(recipes) if recipes else list(DEFAULT_RECIPES)
    unknown = [r for r in chosen if r not in RECIPES]
    if unknown:
        raise InvalidArgumentError(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    if len(set(chosen)) != len(chosen):
        raise InvalidArgumentError(f"recipes listed twice in {chosen}")
    return chosen


class Registrar:
    def __init__(
        self,
        repository: ModelRepository,
        db: RegistryDB,
        *,
        profile_settings: ProfileSettings | None = None,
        progress: RegistrationProgress | None = None,
    ) -> None:
        self._repository = repository
        self._db = db
        self._settings = profile_settings or ProfileSettings()
        self._progress = progress or _Quiet()

    async def register(self, source: Path, name: str, options: RegisterOptions) -> list[VariantRecord]:
        """Register ``source`` as ``name`` and build, profile and record its variants."""
        model = validate_model_name(name)
        with _registration_lock(self._repository.root, model):
            return await self._register(source, model, options)

    async def _register(self, source: Path, model: ModelName, options: RegisterOptions) -> list[VariantRecord]:
        row = self._db.model(model)
        resuming = row is not None and row.state == "registering" and not options.replace
        if row is not None and resuming and not options.recipes:
            recipes = check_recipes(row.recipes)  # a resumed registration builds what it set out to
        else:
            recipes = check_recipes(options.recipes)
        progress = self._progress
        progress.step(f"Reading {source}")
        config, onnx_model = convert_model_file(
            source,
            model,
            n_features=options.n_features,
            input_datatype=options.input_datatype,
            max_batch_size=options.max_batch_size,
        )
        loaded = load_validation(options.validation, config) if options.validation else None
        calibration, validation = split_validation(loaded) if loaded else (None, None)
        labels = validation.labels if validation else None
        task = options.task or infer_task(config, labels)

        on_disk = model in self._repository.names()
        if on_disk and row is None and not options.replace:
            raise InvalidArgumentError(
                f"a model named {model!r} is already in {self._repository.root}; use --replace to overwrite it"
            )
        self._db.begin_registration(
            model,
            task=task,
            source=str(source),
            validation=str(options.validation) if options.validation else None,
            replace=options.replace,
            recipes=recipes,
        )
        self._db.log_event(model, "register", f"{'resume' if resuming else 'start'} from {source}")
        if resuming and on_disk:
            progress.step(f"Resuming the registration of {model}")
            self._clean_orphans(model)
        else:
            extra: dict[str, bytes | Path] = {}
            if options.validation is not None:
                extra[VALIDATION_FILE] = options.validation
            self._repository.write_model(config, onnx_model, extra, replace=True)

        done = {r.id for r in self._db.variants(model)}
        reference = self._repository.artifact(model, FIRST_VERSION)
        reference_outputs = await reference_outputs_of(reference, config, validation.inputs) if validation else None
        for index, recipe in enumerate(recipes):
            progress.recipe_started(recipe, index, len(recipes))
            if recipe in done:
                record = self._db.variant(model, recipe)
                assert record is not None
                progress.recipe_finished(record)
                continue
            record = await self._build(
                model, config, recipe, reference, calibration, validation, reference_outputs, task
            )
            self._db.record_variant(record)
            self._db.log_event(model, "variant", f"{recipe}: {record.status.value} {record.reason}".strip())
            progress.recipe_finished(record)
        self._update_pareto(model)
        self._db.finish_registration(model)
        self._db.log_event(model, "registered")
        return self._db.variants(model)

    def _clean_orphans(self, model: ModelName) -> None:
        self._repository.clean_temporary(model)
        recorded = {r.id for r in self._db.variants(model) if r.status is VariantStatus.READY}
        for version in self._repository.versions(model):
            if version != FIRST_VERSION and version not in recorded:
                self._repository.remove_version(model, version)

    async def _build(
        self,
        model: ModelName,
        config: ModelConfig,
        recipe: str,
        reference: Path,
        calibration: ValidationSet | None,
        validation: ValidationSet | None,
        reference_outputs: dict[str, np.ndarray[Any, Any]] | None,
        task: Task,
    ) -> VariantRecord:
        variant = VariantId(recipe)
        base = VariantRecord(
            model=model,
            id=variant,
            recipe=recipe,
            status=VariantStatus.FAILED,
            parent=None if variant == REFERENCE else REFERENCE,
        )
        with tempfile.TemporaryDirectory(prefix="sloserve-recipe-") as tmp:
            out = Path(tmp) / "model.onnx"
            try:
                built = RECIPES[recipe](
                    RecipeInput(reference, config, calibration.inputs if calibration else {}, task), out
                )
            except RecipeSkipped as skipped:
                return replace(base, status=VariantStatus.SKIPPED, reason=str(skipped))
            except Exception as error:  # a crashing recipe is recorded; the others go on
                log.exception("recipe %s of %s failed", recipe, model)
                return replace(base, reason=f"recipe crashed: {type(error).__name__}: {error}")
            try:
                artifact = self._repository.write_version(model, variant, out)
            except SloserveError as error:
                return replace(base, reason=f"variant is not servable: {error.message}")
        self._progress.step(f"Profiling {recipe}")
        try:
            profile = await profile_variant(
                artifact,
                config,
                validation=validation.inputs if validation else None,
                labels=validation.labels if validation else None,
                reference_outputs=reference_outputs,
                task=task,
                settings=self._settings,
                progress=self._progress.step,
            )
        except SloserveError as error:
            self._repository.remove_version(model, variant)
            return replace(base, reason=f"profiling failed: {error.message}")
        return replace(
            base,
            status=VariantStatus.READY,
            artifact=str(artifact),
            meant_for=built.meant_for,
            details=dict(built.details),
            profile=profile,
        )

    def _update_pareto(self, model: ModelName) -> None:
        ready = [r for r in self._db.variants(model) if r.status is VariantStatus.READY and r.profile]
        points = [
            (
                r.profile.latency_ms[min(r.profile.latency_ms)].p50_ms,
                r.profile.accuracy,
                r.profile.cost_cpu_s_per_1k,
            )
            for r in ready
            if r.profile is not None
        ]
        flags = pareto_flags(points) if points else []
        self._db.set_pareto(model, {r.id: flag for r, flag in zip(ready, flags, strict=True)})

    async def reprofile(self, name: str, variant: str | None = None) -> list[VariantRecord]:
        """Measure ready variants again (all, or one) and update their profiles and the frontier."""
        row = self._db.model(name)
        if row is None:
            raise NotFoundError(f"model {name!r} is not registered")
        model = ModelName(name)
        config = self._repository.read_config(model)
        validation_path = Path(row.validation) if row.validation else None
        local = self._repository.root / model / VALIDATION_FILE
        if local.is_file():
            validation_path = local
        validation = split_validation(load_validation(validation_path, config))[1] if validation_path else None
        reference = self._repository.artifact(model, FIRST_VERSION)
        reference_outputs = await reference_outputs_of(reference, config, validation.inputs) if validation else None
        records = [r for r in self._db.variants(model) if r.status is VariantStatus.READY]
        if variant is not None:
            records = [r for r in records if r.id == variant]
            if not records:
                raise NotFoundError(f"model {name!r} has no ready variant {variant!r}")
        for index, record in enumerate(records):
            self._progress.recipe_started(record.id, index, len(records))
            profile = await profile_variant(
                self._repository.artifact(model, record.id),
                config,
                validation=validation.inputs if validation else None,
                labels=validation.labels if validation else None,
                reference_outputs=reference_outputs,
                task=row.task,
                settings=self._settings,
                progress=self._progress.step,
            )
            self._db.update_profile(model, record.id, profile)
            self._progress.recipe_finished(replace(record, profile=profile))
        self._update_pareto(model)
        self._db.log_event(model, "profile", variant or "all")
        return self._db.variants(model)


@contextlib.contextmanager
def _registration_lock(root: Path, model: ModelName) -> Iterator[None]:
    """One registration of a model at a time (a second would look like a crashed one and 'resume')."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".register-{model}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidArgumentError(f"model {model!r} is being registered by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
