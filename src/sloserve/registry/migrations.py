"""Versioned schema migrations of the registry database.

The schema version lives in ``PRAGMA user_version``; migration ``N`` (1-based) takes
the database from version ``N - 1`` to ``N``. Each migration runs in one
``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash leaves
the database at the old version or the new one, never in between, and two
processes opening the same fresh file apply each migration once (the second one
re-reads the version under the write lock and skips it). A database whose version
is newer than :data:`SCHEMA_VERSION` was written by a newer sloserve and is
refused rather than misread.

Migrations are append-only: never edit a released one, add the next.

The schema keeps the central invariant of the registry in the database itself: a
variant whose status is ``ready`` always has a profile. Triggers refuse a ready
variant without a profile row and refuse deleting the profile of a ready variant;
the profile's foreign key to its variant is deferred to commit, so one transaction
writes the profile first and then marks the variant ready.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

APPLICATION_ID: Final = 0x534C4F53  # "SLOS": marks a file as a sloserve registry database

_V1: Final = (
    """
    CREATE TABLE models (
        repository  TEXT NOT NULL,
        name        TEXT NOT NULL,
        task        TEXT NOT NULL,
        source      TEXT NOT NULL,
        validation  TEXT,
        recipes     TEXT NOT NULL DEFAULT '[]',  -- JSON list of the recipes requested
        state       TEXT NOT NULL CHECK (state IN ('registering', 'ready')),
        generation  INTEGER NOT NULL CHECK (generation >= 1),
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (repository, name)
    )
    """,
    """
    CREATE TABLE variants (
        repository          TEXT NOT NULL,
        model               TEXT NOT NULL,
        id                  TEXT NOT NULL,
        seq                 INTEGER NOT NULL,  -- order of first insertion within the model
        recipe              TEXT NOT NULL,
        parent              TEXT,
        status              TEXT NOT NULL CHECK (status IN ('ready', 'skipped', 'failed')),
        reason              TEXT NOT NULL DEFAULT '',
        artifact            TEXT,
        execution_provider  TEXT NOT NULL,
        meant_for           TEXT NOT NULL,
        details             TEXT NOT NULL DEFAULT '{}',  -- JSON object
        pareto              INTEGER NOT NULL DEFAULT 0 CHECK (pareto IN (0, 1)),
        created_at          REAL NOT NULL,
        updated_at          REAL NOT NULL,
        PRIMARY KEY (repository, model, id),
        FOREIGN KEY (repository, model) REFERENCES models (repository, name) ON DELETE CASCADE
    )
    """,
    "CREATE INDEX variants_by_seq ON variants (repository, model, seq)",
    """
    CREATE TABLE profiles (
        repository   TEXT NOT NULL,
        model        TEXT NOT NULL,
        variant      TEXT NOT NULL,
        profile      TEXT NOT NULL,  -- JSON, VariantProfile.to_dict()
        measured_at  REAL NOT NULL,
        PRIMARY KEY (repository, model, variant),
        FOREIGN KEY (repository, model, variant) REFERENCES variants (repository, model, id)
            ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED
    )
    """,
    """
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        repository  TEXT NOT NULL,
        model       TEXT NOT NULL,
        at          REAL NOT NULL,
        kind        TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX events_by_model ON events (repository, model, id)",
    """
    CREATE TRIGGER variants_ready_needs_profile_on_insert
    BEFORE INSERT ON variants
    WHEN NEW.status = 'ready' AND NOT EXISTS (
        SELECT 1 FROM profiles
        WHERE repository = NEW.repository AND model = NEW.model AND variant = NEW.id
    )
    BEGIN
        SELECT RAISE(ABORT, 'a ready variant needs a profile');
    END
    """,
    """
    CREATE TRIGGER variants_ready_needs_profile_on_update
    BEFORE UPDATE OF status ON variants
    WHEN NEW.status = 'ready' AND NOT EXISTS (
        SELECT 1 FROM profiles
        WHERE repository = NEW.repository AND model = NEW.model AND variant = NEW.id
    )
    BEGIN
        SELECT RAISE(ABORT, 'a ready variant needs a profile');
    END
    """,
    """
    CREATE TRIGGER profiles_kept_while_ready
    BEFORE DELETE ON profiles
    WHEN EXISTS (
        SELECT 1 FROM variants
        WHERE repository = OLD.repository AND model = OLD.model AND id = OLD.variant AND status = 'ready'
    )
    BEGIN
        SELECT RAISE(ABORT, 'the profile of a ready variant cannot be deleted');
    END
    """,
    f"PRAGMA application_id = {APPLICATION_ID}",
)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1,)
"""Migration ``i + 1`` is ``MIGRATIONS[i]``: SQL statements run in one transaction."""

SCHEMA_VERSION: Final = len(MIGRATIONS)


class SchemaTooNewError(Exception):
    """The database was written by a newer sloserve (raised before anything is changed)."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(f"schema version {found} is newer than the supported {supported}")
        self.found = found
        self.supported = supported


def schema_version(conn: sqlite3.Connection) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    return int(version)


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the database up to ``len(migrations)``; return the number of migrations applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open
    transaction. A failing migration is rolled back entirely (its statements and its
    version bump) and its error propagates; earlier migrations stay committed.
    """
    latest = len(migrations)
    found = schema_version(conn)
    if found > latest:
        raise SchemaTooNewError(found, latest)
    applied = 0
    for target in range(found + 1, latest + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)  # another process may have migrated meanwhile
            if current > latest:
                raise SchemaTooNewError(current, latest)
            if current < target:
                for statement in migrations[target - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                applied += 1
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return applied
