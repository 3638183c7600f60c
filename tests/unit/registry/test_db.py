"""The registry database on a real SQLite file: semantics, crash safety, migrations, errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sloserve.errors import InternalError, InvalidArgumentError, NotFoundError, UnavailableError
from sloserve.registry.db import Event, ModelRow, RegistryDB
from sloserve.registry.migrations import SCHEMA_VERSION, apply_migrations
from sloserve.types import ModelName, VariantId
from sloserve.variant import (
    AccuracyKind,
    LatencyStats,
    Task,
    VariantProfile,
    VariantRecord,
    VariantStatus,
)

M = ModelName("digits")

PROFILE = VariantProfile(
    latency_ms={1: LatencyStats(0.5, 0.7, 0.9), 8: LatencyStats(1.1, 1.4, 1.9)},
    latency_intercept_ms=0.42,
    latency_per_row_ms=0.085,
    best_batch=8,
    throughput_sps=5714.3,
    accuracy=0.9733,
    accuracy_kind=AccuracyKind.TOP1,
    memory_mb=61.5,
    size_bytes=123_456,
    load_ms=180.0,
    flops_per_row=10_240,
    parameters=5_130,
    cost_cpu_s_per_1k=0.19,
    intra_op_threads=1,
    measured_at=1_700_000_000.25,
)


class Ticks:
    """A wall clock that advances one second per reading."""

    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def ready(variant: str, model: ModelName = M, **kwargs: object) -> VariantRecord:
    fields: dict[str, object] = {
        "recipe": variant,
        "profile": PROFILE,
        "artifact": f"/repo/{model}/{variant}/model.onnx",
    }
    fields.update(kwargs)
    return VariantRecord(model=model, id=VariantId(variant), status=VariantStatus.READY, **fields)  # type: ignore[arg-type]


def failed(variant: str, model: ModelName = M, reason: str = "not supported") -> VariantRecord:
    return VariantRecord(model=model, id=VariantId(variant), recipe=variant, status=VariantStatus.FAILED, reason=reason)


def begin(db: RegistryDB, model: ModelName = M, *, replace: bool = False, source: str = "digits.onnx") -> ModelRow:
    return db.begin_registration(
        model,
        task=Task.CLASSIFICATION,
        source=source,
        validation="val.npz",
        replace=replace,
        recipes=["fp32", "int8-dynamic"],
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "registry.db"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def db(db_path: Path, repo: Path) -> Iterator[RegistryDB]:
    with RegistryDB(db_path, repo, wall_clock=Ticks()) as opened:
        yield opened


def raw(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


# ---- opening, schema, migrations ---------------------------------------------


def test_open_creates_the_file_in_wal_mode_at_the_current_schema(db: RegistryDB, db_path: Path) -> None:
    assert db_path.is_file()
    conn = raw(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"models", "variants", "profiles", "events"} <= tables


def test_reopening_applies_no_migration_twice_and_keeps_the_data(db_path: Path, repo: Path) -> None:
    with RegistryDB(db_path, repo) as first:
        begin(first)
        first.record_variant(ready("fp32"))
    with RegistryDB(db_path, repo) as second:
        assert second.variants(M) == [ready("fp32")]
    conn = raw(db_path)
    assert apply_migrations(conn) == 0
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_concurrent_first_opens_of_one_file_both_succeed(db_path: Path, repo: Path) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_and_write(i: int) -> None:
        try:
            barrier.wait()
            with RegistryDB(db_path, repo) as db:
                db.log_event(f"m{i}", "opened")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with RegistryDB(db_path, repo) as db:
        assert sorted(e.model for e in db.events()) == ["m0", "m1", "m2", "m3"]


def test_opening_waits_for_a_writer_before_switching_to_wal(db_path: Path, repo: Path) -> None:
    # SQLite refuses the switch to WAL at once, without its busy handler, while another connection holds a
    # write lock on the file (what a concurrent first open does): opening must wait for it as for any lock
    db_path.parent.mkdir(parents=True, exist_ok=True)
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.2, lambda: holder.execute("ROLLBACK"))
    release.start()
    try:
        with RegistryDB(db_path, repo, busy_timeout_s=5.0) as db:
            db.log_event("m", "opened")
            assert db.events()[0].model == "m"
    finally:
        release.join()
        holder.close()


def test_a_failing_migration_is_rolled_back_whole(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    good = ("CREATE TABLE a (x)",)
    bad = ("CREATE TABLE b (x)", "CREATE TABLE broken (")
    with pytest.raises(sqlite3.OperationalError):
        apply_migrations(conn, [good, bad])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"a"}
    assert apply_migrations(conn, [good, ("CREATE TABLE b (x)",)]) == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


def test_a_database_newer_than_the_code_is_refused_untouched(db_path: Path, repo: Path) -> None:
    RegistryDB(db_path, repo).close()
    raw(db_path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(
        InvalidArgumentError, match=r"schema version 2, newer than this sloserve supports \(1\)"
    ) as info:
        RegistryDB(db_path, repo)
    assert str(db_path) in info.value.message
    assert raw(db_path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_a_file_that_is_not_a_database_is_a_clear_error(db_path: Path, repo: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is a text file, not SQLite\n" * 100)
    with pytest.raises(InvalidArgumentError, match="is not a sloserve registry database") as info:
        RegistryDB(db_path, repo)
    assert str(db_path) in info.value.message
    assert db_path.read_bytes() == b"this is a text file, not SQLite\n" * 100


def test_another_applications_sqlite_database_is_refused_untouched(db_path: Path, repo: Path) -> None:
    db_path.parent.mkdir(parents=True)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("CREATE TABLE notes (text)")
    other.close()
    with pytest.raises(InvalidArgumentError, match="another application") as info:
        RegistryDB(db_path, repo)
    assert str(db_path) in info.value.message
    conn = raw(db_path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0


def test_a_folder_in_place_of_the_file_is_a_clear_error(db_path: Path, repo: Path) -> None:
    db_path.mkdir(parents=True)
    with pytest.raises(InvalidArgumentError, match="check the path") as info:
        RegistryDB(db_path, repo)
    assert str(db_path) in info.value.message


def test_disk_full_is_a_clear_error_and_leaves_the_database_usable(
    db_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RegistryDB(db_path, repo) as db:
        begin(db)
        db.record_variant(ready("fp32"))
    pages = raw(db_path).execute("PRAGMA page_count").fetchone()[0]
    real_connect = sqlite3.connect

    def connect_to_a_full_disk(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # growing the file now fails with SQLITE_FULL
        return conn  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", connect_to_a_full_disk)
    with RegistryDB(db_path, repo) as db:
        with pytest.raises(InternalError, match="the disk is full") as info:
            db.record_variant(ready("int8-dynamic", details={"blob": "x" * 200_000}))
        assert str(db_path) in info.value.message
        assert [v.id for v in db.variants(M)] == ["fp32"]
        assert db.variant(M, "int8-dynamic") is None
        db.set_pareto(M, {"fp32": True})  # no growth needed: still writable
        assert db.variants(M)[0].pareto


def test_a_lock_held_too_long_is_unavailable_not_a_hang(db_path: Path, repo: Path) -> None:
    with RegistryDB(db_path, repo, busy_timeout_s=0.05) as db:
        holder = raw(db_path)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(UnavailableError, match="locked") as info:
                begin(db)
            assert str(db_path) in info.value.message
        finally:
            holder.execute("ROLLBACK")
        assert begin(db).state == "registering"


def test_using_a_closed_database_is_an_internal_error(db: RegistryDB, db_path: Path) -> None:
    db.close()
    with pytest.raises(InternalError, match="is closed") as info:
        db.models()
    assert str(db_path) in info.value.message


# ---- begin_registration ------------------------------------------------------


def test_a_new_model_starts_registering_at_generation_1(db: RegistryDB) -> None:
    row = begin(db)
    assert row == ModelRow(
        name=M,
        task=Task.CLASSIFICATION,
        source="digits.onnx",
        validation="val.npz",
        state="registering",
        generation=1,
        created_at=1001.0,
        updated_at=1001.0,
        recipes=("fp32", "int8-dynamic"),
    )
    assert db.model(M) == row
    assert db.models() == [row]


def test_an_invalid_model_name_is_refused(db: RegistryDB) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid model name"):
        begin(db, ModelName("../escape"))
    assert db.models() == []


def test_a_ready_model_is_refused_without_replace(db: RegistryDB) -> None:
    begin(db)
    db.record_variant(ready("fp32"))
    db.finish_registration(M)
    with pytest.raises(InvalidArgumentError) as info:
        begin(db)
    assert info.value.message == ("model 'digits' is already registered; use --replace to register a new generation")
    row = db.model(M)
    assert row is not None and row.state == "ready" and row.generation == 1
    assert db.variants(M) == [ready("fp32")]


def test_replace_bumps_the_generation_and_removes_the_old_variants(db: RegistryDB, db_path: Path) -> None:
    first = begin(db)
    db.record_variant(ready("fp32"))
    db.record_variant(failed("fp16"))
    db.finish_registration(M)
    row = db.begin_registration(
        M, task=Task.REGRESSION, source="v2.onnx", validation=None, replace=True, recipes=["fp32"]
    )
    assert (row.state, row.generation, row.task, row.source, row.validation, row.recipes) == (
        "registering",
        2,
        Task.REGRESSION,
        "v2.onnx",
        None,
        ("fp32",),
    )
    assert row.created_at == first.created_at and row.updated_at > first.updated_at
    assert db.variants(M) == []
    assert raw(db_path).execute("SELECT count(*) FROM profiles").fetchone()[0] == 0


def test_an_unfinished_registration_is_returned_as_is_to_be_resumed(db: RegistryDB) -> None:
    first = begin(db)
    db.record_variant(ready("fp32"))
    again = begin(db, source="something-else.onnx")
    assert again == first
    assert db.variants(M) == [ready("fp32")]


def test_replace_restarts_an_unfinished_registration(db: RegistryDB) -> None:
    begin(db)
    db.record_variant(ready("fp32"))
    row = begin(db, replace=True)
    assert (row.state, row.generation) == ("registering", 2)
    assert db.variants(M) == []


def test_finish_registration_makes_the_model_ready(db: RegistryDB) -> None:
    begin(db)
    db.finish_registration(M)
    row = db.model(M)
    assert row is not None and row.state == "ready"
    with pytest.raises(NotFoundError):
        db.finish_registration(ModelName("unknown"))


# ---- variants and profiles -----------------------------------------------------


def test_a_ready_record_without_a_profile_is_refused_and_nothing_written(db: RegistryDB) -> None:
    begin(db)
    with pytest.raises(ValueError, match="ready but has no profile"):
        db.record_variant(ready("fp32", profile=None))
    assert db.variants(M) == []


def test_a_variant_of_an_unknown_model_is_refused(db: RegistryDB) -> None:
    with pytest.raises(NotFoundError, match="'nope' is not registered"):
        db.record_variant(ready("fp32", model=ModelName("nope")))


def test_variants_keep_their_first_insertion_order_through_updates(db: RegistryDB) -> None:
    begin(db)
    for name in ("fp32", "int8-dynamic", "fp16", "approx"):
        db.record_variant(failed(name))
    db.record_variant(ready("int8-dynamic", details={"calibration": 128}))
    assert [v.id for v in db.variants(M)] == ["fp32", "int8-dynamic", "fp16", "approx"]
    assert db.variant(M, "int8-dynamic") == ready("int8-dynamic", details={"calibration": 128})
    assert db.variant(M, "missing") is None
    assert db.variants(ModelName("unknown")) == []


def test_recording_a_variant_as_failed_drops_its_profile(db: RegistryDB, db_path: Path) -> None:
    begin(db)
    db.record_variant(ready("fp32"))
    db.record_variant(failed("fp32", reason="re-check failed"))
    assert db.variant(M, "fp32") == failed("fp32", reason="re-check failed")
    assert raw(db_path).execute("SELECT count(*) FROM profiles").fetchone()[0] == 0


def test_update_profile_replaces_the_profile(db: RegistryDB) -> None:
    begin(db)
    db.record_variant(ready("fp32"))
    newer = VariantProfile.from_dict({**PROFILE.to_dict(), "best_batch": 16, "measured_at": 1_800_000_000.0})
    db.update_profile(M, "fp32", newer)
    assert db.variant(M, "fp32") == ready("fp32", profile=newer)
    with pytest.raises(NotFoundError, match="no variant 'int8'"):
        db.update_profile(M, "int8", newer)


def test_set_pareto_changes_the_named_variants_all_or_none(db: RegistryDB) -> None:
    begin(db)
    for name in ("fp32", "int8-dynamic", "fp16"):
        db.record_variant(ready(name))
    db.set_pareto(M, {"fp32": True, "fp16": True})
    db.set_pareto(M, {"fp16": False})
    assert {v.id: v.pareto for v in db.variants(M)} == {"fp32": True, "int8-dynamic": False, "fp16": False}
    with pytest.raises(NotFoundError, match="no variant 'ghost'"):
        db.set_pareto(M, {"int8-dynamic": True, "ghost": True})
    assert {v.id: v.pareto for v in db.variants(M)} == {"fp32": True, "int8-dynamic": False, "fp16": False}


def test_delete_model_removes_variants_and_profiles_but_keeps_events(db: RegistryDB, db_path: Path) -> None:
    begin(db)
    db.record_variant(ready("fp32"))
    db.log_event(M, "registered")
    db.delete_model(M)
    assert db.model(M) is None and db.variants(M) == []
    conn = raw(db_path)
    assert conn.execute("SELECT count(*) FROM variants").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] == 0
    assert [e.kind for e in db.events(M)] == ["registered"]
    with pytest.raises(NotFoundError):
        db.delete_model(M)


def test_the_schema_itself_refuses_a_ready_variant_without_profile(db: RegistryDB, db_path: Path) -> None:
    begin(db)
    db.record_variant(ready("fp32"))
    conn = raw(db_path)
    repository = str(db.repository)
    with pytest.raises(sqlite3.IntegrityError, match="needs a profile"):
        conn.execute(
            "INSERT INTO variants (repository, model, id, seq, recipe, status, execution_provider, meant_for,"
            " created_at, updated_at) VALUES (?, ?, 'x', 9, 'x', 'ready', 'cpu', 'cpu', 0, 0)",
            (repository, M),
        )
    with pytest.raises(sqlite3.IntegrityError, match="cannot be deleted"):
        conn.execute("DELETE FROM profiles WHERE repository = ? AND variant = 'fp32'", (repository,))
    assert db.variant(M, "fp32") == ready("fp32")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
finite = st.floats(allow_nan=False, allow_infinity=False)
stats = st.builds(LatencyStats, finite, finite, finite)
profiles = st.builds(
    VariantProfile,
    latency_ms=st.dictionaries(st.integers(1, 4096), stats, max_size=6),
    latency_intercept_ms=finite,
    latency_per_row_ms=finite,
    best_batch=st.integers(1, 4096),
    throughput_sps=finite,
    accuracy=st.none() | finite,
    accuracy_kind=st.none() | st.sampled_from(AccuracyKind),
    memory_mb=finite,
    size_bytes=st.integers(0, 2**62),
    load_ms=finite,
    flops_per_row=st.integers(0, 2**62),
    parameters=st.integers(0, 2**62),
    cost_cpu_s_per_1k=finite,
    intra_op_threads=st.integers(1, 64),
    measured_at=st.floats(min_value=0, max_value=4e9),
)


@st.composite
def records(draw: st.DrawFn) -> VariantRecord:
    status = draw(st.sampled_from(VariantStatus))
    profile = draw(profiles) if status is VariantStatus.READY else draw(st.none() | profiles)
    return VariantRecord(
        model=M,
        id=VariantId(draw(st.sampled_from(["fp32", "int8-dynamic", "fp16", "approx"]))),
        recipe=draw(st.text(min_size=1, max_size=12)),
        status=status,
        reason=draw(st.text(max_size=30)),
        parent=draw(st.none() | st.just(VariantId("fp32"))),
        artifact=draw(st.none() | st.text(max_size=40)),
        execution_provider=draw(st.sampled_from(["CPUExecutionProvider", "CUDAExecutionProvider"])),
        meant_for=draw(st.sampled_from(["cpu", "gpu"])),
        profile=profile,
        pareto=draw(st.booleans()),
        details=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
    )


def test_records_and_profiles_round_trip_exactly(db: RegistryDB) -> None:
    begin(db)

    @settings(max_examples=60, deadline=None)
    @given(record=records())
    def check(record: VariantRecord) -> None:
        db.record_variant(record)
        assert db.variant(M, record.id) == record
        assert next(v for v in db.variants(M) if v.id == record.id) == record

    check()


# ---- events, scoping, concurrency ----------------------------------------------


def test_events_are_the_latest_oldest_first_per_model_or_all(db: RegistryDB) -> None:
    for i in range(5):
        db.log_event(M, "built", f"variant {i}")
    db.log_event("other", "deleted")
    assert db.events(M, limit=2) == [
        Event(at=1004.0, model=M, kind="built", detail="variant 3"),
        Event(at=1005.0, model=M, kind="built", detail="variant 4"),
    ]
    assert [e.model for e in db.events()] == [M] * 5 + ["other"]
    assert db.events(limit=0) == []


def test_two_repositories_share_one_database_without_seeing_each_other(db_path: Path, tmp_path: Path) -> None:
    with RegistryDB(db_path, tmp_path / "a") as a, RegistryDB(db_path, tmp_path / "b" / ".." / "b") as b:
        begin(a)
        a.record_variant(ready("fp32"))
        a.log_event(M, "registered")
        assert b.models() == [] and b.variants(M) == [] and b.events() == []
        begin(b, source="other.onnx")
        b.record_variant(failed("fp32"))
        assert [v.status for v in a.variants(M)] == [VariantStatus.READY]
        assert b.repository == (tmp_path / "b").resolve()


def test_two_handles_in_two_threads_see_each_others_commits(db_path: Path, repo: Path) -> None:
    with RegistryDB(db_path, repo) as a, RegistryDB(db_path, repo) as b:
        begin(a)
        seen: list[object] = []

        def in_thread() -> None:
            seen.append(b.model(M))
            b.record_variant(ready("fp32"))

        t = threading.Thread(target=in_thread)
        t.start()
        t.join()
        assert seen == [a.model(M)]
        assert a.variants(M) == [ready("fp32")]


def test_a_writer_is_not_blocked_by_an_open_reader(db: RegistryDB, db_path: Path) -> None:
    begin(db)
    reader = raw(db_path)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM variants").fetchone()[0] == 0
    db.record_variant(ready("fp32"))  # WAL: commits while the reader holds its snapshot
    assert reader.execute("SELECT count(*) FROM variants").fetchone()[0] == 0
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM variants").fetchone()[0] == 1


def test_one_handle_shared_by_threads_loses_no_write(db: RegistryDB) -> None:
    begin(db)

    def write(i: int) -> None:
        for j in range(5):
            db.record_variant(ready(f"v{i}-{j}"))
            db.log_event(M, "built", f"v{i}-{j}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(db.variants(M)) == 20
    assert len(db.events(M)) == 20


# ---- crash safety: real processes killed mid-write -------------------------------

CHILD = r"""
import json, os, sqlite3, sys
from pathlib import Path
from sloserve.registry.db import RegistryDB
from sloserve.types import ModelName, VariantId
from sloserve.variant import Task, VariantProfile, VariantRecord, VariantStatus

db_path, repo, mode, arg, profile_json = sys.argv[1:6]
profile = VariantProfile.from_dict(json.loads(profile_json))
M = ModelName("digits")
armed = False

def trace(sql):
    if armed and sql.lstrip().upper().startswith(arg):
        os._exit(17)

real_connect = sqlite3.connect
def connect(*args, **kwargs):
    conn = real_connect(*args, **kwargs)
    conn.set_trace_callback(trace)
    return conn
sqlite3.connect = connect

def record(name, big=False):
    details = {"blob": "x" * 4_000_000} if big else {}
    return VariantRecord(model=M, id=VariantId(name), recipe=name, status=VariantStatus.READY,
                         profile=profile, details=details)

db = RegistryDB(Path(db_path), Path(repo))
db.begin_registration(M, task=Task.CLASSIFICATION, source="digits.onnx", validation=None,
                      replace=False, recipes=["fp32", "int8-dynamic"])
if mode == "kill-at":
    db.record_variant(record("fp32"))
    print(os.path.getsize(db_path + "-wal"), flush=True)
    armed = True
    db.record_variant(record("int8-dynamic", big=True))
    os._exit(3)  # not reached
elif mode == "loop":
    print("started", flush=True)
    i = 0
    while True:
        db.record_variant(record(f"v{i}", big=i % 3 == 2))
        i += 1
elif mode == "write-once":
    db.record_variant(record("fp32"))
    db.log_event(M, "written", str(os.getpid()))
"""


def spawn(db_path: Path, repo: Path, mode: str, arg: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path), str(repo), mode, arg, json.dumps(PROFILE.to_dict())],
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("kill_at", ["INSERT INTO VARIANTS", "COMMIT"])
def test_a_process_killed_inside_record_variant_leaves_no_trace_of_it(db_path: Path, repo: Path, kill_at: str) -> None:
    child = spawn(db_path, repo, "kill-at", kill_at)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 17, "the child must die inside the transaction"
    wal_before = int(out.strip())
    if kill_at == "COMMIT":  # the uncommitted 4 MB really reached the WAL file before the crash
        assert os.path.getsize(f"{db_path}-wal") > wal_before + 1_000_000
    with RegistryDB(db_path, repo) as db:
        row = db.model(M)
        assert row is not None and row.state == "registering" and row.generation == 1
        assert db.variants(M) == [ready("fp32", artifact=None)]
        assert raw(db_path).execute("SELECT count(*) FROM profiles").fetchone()[0] == 1
        # the workflow resumes it: same generation, the missing variant is recorded, then finished
        assert begin(db) == row
        db.record_variant(ready("int8-dynamic"))
        db.finish_registration(M)
        assert [v.id for v in db.variants(M)] == ["fp32", "int8-dynamic"]


@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.06])
def test_sigkill_at_any_moment_never_shows_a_ready_variant_without_profile(
    db_path: Path, repo: Path, delay_s: float
) -> None:
    child = spawn(db_path, repo, "loop")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    time.sleep(delay_s)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    with RegistryDB(db_path, repo) as db:
        row = db.model(M)
        assert row is not None and row.state == "registering"
        variants = db.variants(M)
        assert all(v.status is VariantStatus.READY and v.profile == PROFILE for v in variants)
        assert [v.id for v in variants] == [f"v{i}" for i in range(len(variants))]
    conn = raw(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    orphans = conn.execute(
        "SELECT count(*) FROM variants AS v LEFT JOIN profiles AS p"
        " ON p.repository = v.repository AND p.model = v.model AND p.variant = v.id"
        " WHERE v.status = 'ready' AND p.profile IS NULL"
    ).fetchone()[0]
    assert orphans == 0


def test_a_write_from_another_process_is_seen_by_an_open_handle(db_path: Path, repo: Path) -> None:
    with RegistryDB(db_path, repo) as db:
        assert db.models() == []
        child = spawn(db_path, repo, "write-once")
        child.communicate(timeout=30)
        assert child.returncode == 0
        assert [m.name for m in db.models()] == [M]
        assert db.variants(M) == [ready("fp32", artifact=None)]
        assert [(e.kind, e.detail) for e in db.events(M)] == [("written", str(child.pid))]
