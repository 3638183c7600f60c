"""``sloserve simulate`` end to end: flags to report, JSON, and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sloserve.cli import main

FAMILY = [
    {"id": "small", "accuracy": 0.9, "intercept_ms": 0.5, "per_row_ms": 0.1, "max_batch": 16, "load_ms": 100},
    {"id": "large", "accuracy": 0.97, "intercept_ms": 2.0, "per_row_ms": 0.5, "max_batch": 16, "load_ms": 300},
]


@pytest.fixture
def family(tmp_path: Path) -> Path:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(FAMILY))
    return path


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLOSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SLOSERVE_REPOSITORY", raising=False)
    return tmp_path / "home"


def simulate_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["simulate", *args, "--json"]) == 0
    raw: dict[str, object] = json.loads(capsys.readouterr().out)
    return raw


def test_json_report_from_a_family_file(family: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = simulate_json(
        capsys,
        "--family",
        str(family),
        "--rate",
        "500",
        "--duration",
        "3",
        "--cpus",
        "4",
        "--slo",
        "fast:5:0.85:0.5",
        "--slo",
        "good:50:0.95:0.5",
    )
    assert raw["policy"] == "modelless" and raw["cpus"] == 4
    classes = raw["classes"]
    assert isinstance(classes, list) and [c["name"] for c in classes] == ["fast", "good"]
    variants = raw["variants"]
    assert isinstance(variants, list)
    small, large = (v["selected"] for v in variants)
    # "good" needs the large variant; a "fast" query goes to the small one, or joins a batch forming on the large
    assert small + large == classes[0]["arrivals"] + classes[1]["arrivals"]
    assert large >= classes[1]["arrivals"] and small > 0
    assert raw["attainment"] == 1.0
    again = simulate_json(
        capsys,
        *("--family", str(family), "--rate", "500", "--duration", "3", "--cpus", "4"),
        *("--slo", "fast:5:0.85:0.5", "--slo", "good:50:0.95:0.5"),
    )
    raw.pop("timing")
    again.pop("timing")
    assert again == raw


def test_tables_steps_and_baselines(family: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--family", str(family), "--steps", "2:200,2:2000", "--cpus", "4"]) == 0
    out = capsys.readouterr().out
    for text in ("SLO attainment", "By SLO class", "By variant", "tight", "loose", "small", "Over time"):
        assert text in out
    raw = simulate_json(capsys, "--family", str(family), "--rate", "300", "--policy", "maxbatch:large:2", "--cpus", "2")
    assert raw["policy"] == "maxbatch:large:2"
    raw = simulate_json(
        capsys, "--synthetic", "3", "--rate", "300", "--burst-rate", "3000", "--burst-every", "2", "--duration", "4"
    )
    assert raw["arrivals"] > 300 * 4


def test_an_event_loop_front_end_from_the_command_line(family: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--frontend-wake-ms makes each front end an event loop that wakes up when it has idled: a request costs its
    --frontend-ms and its share of a wake-up, less the busier the loop; the report says what a query cost."""
    args = ("--family", str(family), "--duration", "3", "--cpus", "4", "--slo", "good:50:0.95:1")
    fifo = simulate_json(capsys, *args, "--rate", "500", "--frontend-ms", "0.2")
    assert fifo["frontend_ms_per_query"] == pytest.approx(0.2)
    costs = [
        simulate_json(capsys, *args, "--rate", rate, "--frontend-ms", "0.2", "--frontend-wake-ms", "0.5")[
            "frontend_ms_per_query"
        ]
        for rate in ("100", "2000")
    ]
    assert isinstance(costs[0], float) and isinstance(costs[1], float)
    assert costs[0] > 0.65 > 0.5 > costs[1] > 0.2
    assert main(["simulate", *args, "--rate", "500", "--frontend-ms", "0.2", "--frontend-wake-ms", "0.5"]) == 0
    assert "front end ms per query" in capsys.readouterr().out


def test_csv_workload(family: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "arrivals.csv"
    csv.write_text("time_s,latency_slo_ms,min_accuracy\n" + "".join(f"{i / 100},20,0.95\n" for i in range(200)))
    raw = simulate_json(capsys, "--family", str(family), "--csv", str(csv), "--cpus", "2")
    assert raw["arrivals"] == 200
    variants = raw["variants"]
    assert isinstance(variants, list) and variants[1]["selected"] == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--synthetic", "2", "--rate", "-5"], "--rate must be non-negative"),
        (["--synthetic", "2"], "give a workload"),
        (["--synthetic", "2", "--rate", "5", "--steps", "1:5"], "choose one workload"),
        (["--rate", "5"], "choose the variants"),
        (["--synthetic", "2", "--rate", "5", "--slo", "x:5:0.9"], "--slo"),
        (["--synthetic", "2", "--rate", "5", "--policy", "fixed:nope"], "no variant 'nope'"),
        (["--synthetic", "2", "--rate", "5", "--frontend-wake-ms", "-1"], "--frontend-wake-ms must be"),
        (["--model", "digits", "--rate", "5"], "register"),
    ],
)
def test_errors_are_clear(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_malformed_csv_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a long path, and brackets that rich would take for markup: the message comes out whole, on one line
    folder = tmp_path / ("a-folder-whose-name-is-long-enough-to-wrap-an-80-column-console" * 2)
    folder.mkdir()
    csv = folder / "[bold]bad.csv"
    csv.write_text("time_s\n0.1\n0.2\noops\n")
    assert main(["simulate", "--synthetic", "2", "--csv", str(csv)]) == 2
    assert f"error: {csv} line 4: time_s 'oops' is not a number\n" in capsys.readouterr().err


def test_help_describes_the_workloads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = capsys.readouterr().out
    for text in (
        "--synthetic",
        "--steps",
        "--csv",
        "--slo",
        "maxbatch:VARIANT:TIMEOUT_MS",
        "--cpus",
        "--frontend-wake-ms",
    ):
        assert text in out
