"""The registry database: models, their variants and profiles, and an event log.

One SQLite file (stdlib :mod:`sqlite3`) in WAL mode, so readers in other processes
never block the writer and see only committed transactions. Every write is one
``BEGIN IMMEDIATE`` transaction: a variant and its profile are written together, so
a crash (even ``SIGKILL``) mid-registration never leaves a ready variant without
its profile, and the model stays ``registering`` until the workflow finishes it,
which is how an interrupted registration is found and resumed. The schema and its
versioned migrations live in :mod:`sloserve.registry.migrations`.

Rows are scoped to a model repository (its resolved absolute path), so one
database in the sloserve home can describe several repositories.

SQLite failures a user can cause (disk full, a file that is not a database, no
permission, a lock held too long) become :class:`~sloserve.errors.SloserveError`
subclasses naming the database path; see :func:`sqlite_error`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from sloserve.errors import (
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    SloserveError,
    UnavailableError,
)
from sloserve.model_config import validate_model_name
from sloserve.registry.migrations import APPLICATION_ID, SchemaTooNewError, apply_migrations
from sloserve.types import ModelName, VariantId
from sloserve.variant import Task, VariantProfile, VariantRecord, VariantStatus

ModelState = Literal["registering", "ready"]
DEFAULT_BUSY_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class ModelRow:
    name: ModelName
    task: Task
    source: str
    validation: str | None
    state: ModelState
    generation: int
    """1 for a first registration; each ``--replace`` adds one."""
    created_at: float
    updated_at: float
    recipes: tuple[str, ...] = ()
    """The recipes requested by the registration (kept so a resumed one builds the same)."""


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    model: str
    kind: str
    detail: str


def sqlite_error(exc: sqlite3.Error, path: Path, action: str) -> SloserveError:
    """Translate a :mod:`sqlite3` error into the sloserve error a user should see."""
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        return InternalError(f"registry database {path} is closed (while {action})")
    raw_code = getattr(exc, "sqlite_errorcode", None)  # absent on errors raised by the sqlite3 module itself
    code = raw_code & 0xFF if isinstance(raw_code, int) else -1
    where = f"registry database {path}"
    if code == sqlite3.SQLITE_FULL:
        return InternalError(f"{where}: the disk is full (while {action}); free some space and retry")
    if code == sqlite3.SQLITE_NOTADB:
        return InvalidArgumentError(f"{path} is not a sloserve registry database (SQLite: {exc})")
    if code == sqlite3.SQLITE_CORRUPT:
        return InternalError(f"{where} is corrupt ({exc}, while {action}); move it aside or restore a backup")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH):
        return InvalidArgumentError(f"cannot use {where} ({exc}, while {action}); check the path and its permissions")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return UnavailableError(f"{where} stayed locked by another process (while {action}); retry")
    if code == sqlite3.SQLITE_IOERR:
        return InternalError(f"{where}: I/O error while {action} ({exc}); check the disk")
    return InternalError(f"{where}: {action} failed: {exc}")


WAL_RETRY_S: Final = 0.01


def _enable_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Switch to WAL, retrying for up to ``busy_timeout_s``: SQLite answers "database is locked" to the switch at
    once, without its busy handler, while another connection holds the file (4 threads opening a new database
    together: 14 failures in 300 tries, SQLite 3.40)."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() >= deadline:
                raise
        time.sleep(WAL_RETRY_S)


def _record_row(row: sqlite3.Row) -> VariantRecord:
    raw_profile = row["profile"]
    return VariantRecord(
        model=ModelName(row["model"]),
        id=VariantId(row["id"]),
        recipe=row["recipe"],
        status=VariantStatus(row["status"]),
        reason=row["reason"],
        parent=VariantId(row["parent"]) if row["parent"] is not None else None,
        artifact=row["artifact"],
        execution_provider=row["execution_provider"],
        meant_for=row["meant_for"],
        profile=VariantProfile.from_dict(json.loads(raw_profile)) if raw_profile is not None else None,
        pareto=bool(row["pareto"]),
        details=json.loads(row["details"]),
    )


def _model_row(row: sqlite3.Row) -> ModelRow:
    return ModelRow(
        name=ModelName(row["name"]),
        task=Task(row["task"]),
        source=row["source"],
        validation=row["validation"],
        state=row["state"],
        generation=row["generation"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        recipes=tuple(json.loads(row["recipes"])),
    )


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serializable: {exc}") from None


_VARIANT_COLUMNS: Final = (
    "v.model, v.id, v.recipe, v.parent, v.status, v.reason, v.artifact, "
    "v.execution_provider, v.meant_for, v.details, v.pareto, p.profile"
)
_VARIANT_SELECT: Final = f"""
    SELECT {_VARIANT_COLUMNS} FROM variants AS v
    LEFT JOIN profiles AS p ON p.repository = v.repository AND p.model = v.model AND p.variant = v.id
    WHERE v.repository = ? AND v.model = ?"""


class RegistryDB:
    """The registry database of one model repository. Safe to share between threads."""

    def __init__(
        self,
        path: Path,
        repository: Path,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.repository = repository.resolve()
        self._repo = str(self.repository)
        self._now = wall_clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(f"cannot create the folder of registry database {path}: {exc}") from None
        try:
            self._conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise sqlite_error(exc, path, "opening it") from None
        try:
            self._setup(busy_timeout_s)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, busy_timeout_s: float) -> None:
        conn = self._conn
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            _enable_wal(conn, busy_timeout_s)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._check_application_id()
            apply_migrations(conn)
        except SchemaTooNewError as exc:
            raise InvalidArgumentError(
                f"registry database {self.path} has schema version {exc.found}, newer than this "
                f"sloserve supports ({exc.supported}); upgrade sloserve or use another database"
            ) from None
        except sqlite3.Error as exc:
            raise sqlite_error(exc, self.path, "opening it") from None

    def _check_application_id(self) -> None:
        """Refuse an SQLite file of another application rather than add our tables to it."""
        conn = self._conn
        conn.execute("BEGIN")  # one snapshot: another process may be creating the schema right now
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # read only: nothing to keep
        if app_id != APPLICATION_ID and (app_id != 0 or has_tables):
            raise InvalidArgumentError(
                f"{self.path} is an SQLite database of another application, not a sloserve registry database"
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- plumbing ------------------------------------------------------

    @contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise sqlite_error(exc, self.path, action) from None

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):  # the first error is the one to report
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise sqlite_error(exc, self.path, action) from None

    def _require_model(self, conn: sqlite3.Connection, model: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM models WHERE repository = ? AND name = ?", (self._repo, model)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"model {model!r} is not registered in {self.repository}")
        return row

    def _require_variant(self, conn: sqlite3.Connection, model: str, variant: str) -> None:
        found = conn.execute(
            "SELECT 1 FROM variants WHERE repository = ? AND model = ? AND id = ?", (self._repo, model, variant)
        ).fetchone()
        if found is None:
            raise NotFoundError(f"model {model!r} has no variant {variant!r} in {self.repository}")

    # ---- registration --------------------------------------------------

    def begin_registration(
        self,
        model: ModelName,
        *,
        task: Task,
        source: str,
        validation: str | None,
        replace: bool,
        recipes: Sequence[str] = (),
    ) -> ModelRow:
        """Start (or resume) registering ``model``; return its row, state ``registering``.

        A new model gets generation 1. A ready model is refused unless ``replace``,
        which bumps the generation and deletes its variants and profiles in the same
        transaction. A model left ``registering`` (a crash, or a registration still
        running elsewhere) is returned unchanged for the workflow to resume, unless
        ``replace``, which restarts it the same way. Artifacts on disk are the
        caller's to remove.
        """
        name = validate_model_name(model)
        recipes_json = _to_json(list(recipes), "recipes")
        with self._write(f"registering model {name!r}") as conn:
            row = conn.execute("SELECT * FROM models WHERE repository = ? AND name = ?", (self._repo, name)).fetchone()
            now = self._now()
            if row is None:
                conn.execute(
                    """INSERT INTO models (repository, name, task, source, validation, recipes, state,
                                           generation, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, 'registering', 1, ?, ?)""",
                    (self._repo, name, task.value, source, validation, recipes_json, now, now),
                )
            elif not replace:
                if row["state"] == "ready":
                    raise InvalidArgumentError(
                        f"model {name!r} is already registered; use --replace to register a new generation"
                    )
                return _model_row(row)
            else:
                conn.execute("DELETE FROM variants WHERE repository = ? AND model = ?", (self._repo, name))
                conn.execute(
                    """UPDATE models SET task = ?, source = ?, validation = ?, recipes = ?, state = 'registering',
                                         generation = generation + 1, updated_at = ?
                       WHERE repository = ? AND name = ?""",
                    (task.value, source, validation, recipes_json, now, self._repo, name),
                )
            return _model_row(self._require_model(conn, name))

    def record_variant(self, record: VariantRecord) -> None:
        """Insert or update a variant and its profile in one transaction.

        A ``ready`` record must carry its profile (``ValueError`` otherwise). A record
        without a profile removes a stored one. A new variant is ordered after the
        model's existing ones; an updated one keeps its place.
        """
        if record.status is VariantStatus.READY and record.profile is None:
            raise ValueError(f"variant {record.model}/{record.id} is ready but has no profile")
        details = _to_json(record.details, f"details of variant {record.model}/{record.id}")
        profile = (
            _to_json(record.profile.to_dict(), f"profile of variant {record.model}/{record.id}")
            if record.profile is not None
            else None
        )
        with self._write(f"recording variant {record.model}/{record.id}") as conn:
            self._require_model(conn, record.model)
            now = self._now()
            if record.profile is not None:  # first: the triggers want a ready variant's profile in place
                self._upsert_profile(conn, record.model, record.id, profile, record.profile.measured_at or now)
            conn.execute(
                """INSERT INTO variants (repository, model, id, seq, recipe, parent, status, reason, artifact,
                                         execution_provider, meant_for, details, pareto, created_at, updated_at)
                   VALUES (?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM variants
                                     WHERE repository = ? AND model = ?),
                           ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (repository, model, id) DO UPDATE SET
                       recipe = excluded.recipe, parent = excluded.parent, status = excluded.status,
                       reason = excluded.reason, artifact = excluded.artifact,
                       execution_provider = excluded.execution_provider, meant_for = excluded.meant_for,
                       details = excluded.details, pareto = excluded.pareto, updated_at = excluded.updated_at""",
                (
                    self._repo,
                    record.model,
                    record.id,
                    self._repo,
                    record.model,
                    record.recipe,
                    record.parent,
                    record.status.value,
                    record.reason,
                    record.artifact,
                    record.execution_provider,
                    record.meant_for,
                    details,
                    int(record.pareto),
                    now,
                    now,
                ),
            )
            if record.profile is None:
                conn.execute(
                    "DELETE FROM profiles WHERE repository = ? AND model = ? AND variant = ?",
                    (self._repo, record.model, record.id),
                )

    def _upsert_profile(
        self, conn: sqlite3.Connection, model: str, variant: str, profile_json: str | None, measured_at: float
    ) -> None:
        conn.execute(
            """INSERT INTO profiles (repository, model, variant, profile, measured_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (repository, model, variant) DO UPDATE SET
                   profile = excluded.profile, measured_at = excluded.measured_at""",
            (self._repo, model, variant, profile_json, measured_at),
        )

    def finish_registration(self, model: ModelName) -> None:
        """Mark ``model`` ready: its variants become servable."""
        with self._write(f"finishing the registration of {model!r}") as conn:
            self._require_model(conn, model)
            conn.execute(
                "UPDATE models SET state = 'ready', updated_at = ? WHERE repository = ? AND name = ?",
                (self._now(), self._repo, model),
            )

    def update_profile(self, model: str, variant: str, profile: VariantProfile) -> None:
        """Replace the profile of an existing variant (re-profiling)."""
        profile_json = _to_json(profile.to_dict(), f"profile of variant {model}/{variant}")
        with self._write(f"updating the profile of {model}/{variant}") as conn:
            self._require_variant(conn, model, variant)
            self._upsert_profile(conn, model, variant, profile_json, profile.measured_at or self._now())

    def set_pareto(self, model: str, flags: Mapping[str, bool]) -> None:
        """Set the Pareto flag of the named variants (others keep theirs), all or none."""
        with self._write(f"setting the Pareto front of {model!r}") as conn:
            self._require_model(conn, model)
            for variant in flags:
                self._require_variant(conn, model, variant)
            conn.executemany(
                "UPDATE variants SET pareto = ? WHERE repository = ? AND model = ? AND id = ?",
                [(int(flag), self._repo, model, variant) for variant, flag in flags.items()],
            )

    def delete_model(self, model: str) -> None:
        """Delete a model with its variants and profiles (its events stay)."""
        with self._write(f"deleting model {model!r}") as conn:
            self._require_model(conn, model)
            conn.execute("DELETE FROM models WHERE repository = ? AND name = ?", (self._repo, model))

    # ---- reading -------------------------------------------------------

    def model(self, model: str) -> ModelRow | None:
        with self._read(f"reading model {model!r}") as conn:
            row = conn.execute("SELECT * FROM models WHERE repository = ? AND name = ?", (self._repo, model)).fetchone()
        return _model_row(row) if row is not None else None

    def models(self) -> list[ModelRow]:
        """Every model of this repository, by name."""
        with self._read("listing models") as conn:
            rows = conn.execute("SELECT * FROM models WHERE repository = ? ORDER BY name", (self._repo,)).fetchall()
        return [_model_row(row) for row in rows]

    def variants(self, model: str) -> list[VariantRecord]:
        """The model's variants in order of first insertion, profiles attached; [] for an unknown model."""
        with self._read(f"reading the variants of {model!r}") as conn:
            rows = conn.execute(f"{_VARIANT_SELECT} ORDER BY v.seq", (self._repo, model)).fetchall()
        return [_record_row(row) for row in rows]

    def variant(self, model: str, variant: str) -> VariantRecord | None:
        with self._read(f"reading variant {model}/{variant}") as conn:
            row = conn.execute(f"{_VARIANT_SELECT} AND v.id = ?", (self._repo, model, variant)).fetchone()
        return _record_row(row) if row is not None else None

    # ---- events --------------------------------------------------------

    def log_event(self, model: str, kind: str, detail: str = "") -> None:
        with self._write(f"logging an event of {model!r}") as conn:
            conn.execute(
                "INSERT INTO events (repository, model, at, kind, detail) VALUES (?, ?, ?, ?, ?)",
                (self._repo, model, self._now(), kind, detail),
            )

    def events(self, model: str | None = None, limit: int = 100) -> list[Event]:
        """The latest ``limit`` events (of ``model``, or of every model), oldest first."""
        query = "SELECT at, model, kind, detail FROM events WHERE repository = ?"
        params: tuple[Any, ...] = (self._repo,)
        if model is not None:
            query += " AND model = ?"
            params += (model,)
        with self._read("reading events") as conn:
            rows = conn.execute(f"{query} ORDER BY id DESC LIMIT ?", (*params, max(0, limit))).fetchall()
        return [Event(at=r["at"], model=r["model"], kind=r["kind"], detail=r["detail"]) for r in reversed(rows)]
