"""The command line as a user runs it: real subprocesses."""

from __future__ import annotations

import os
import pickle
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def run(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLOSERVE_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "sloserve.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_documents_every_setting(tmp_path: Path) -> None:
    out = run("serve", "--help", home=tmp_path).stdout
    for text in ("--repository", "--http-port", "--grpc-port", "--metrics-port", "SLOSERVE_HTTP_PORT", "--max-body-mb"):
        assert text in out
    overview = run("--help", home=tmp_path).stdout  # model-less serving is what sloserve is for: said up front
    assert "latency_slo_ms" in overview and "min_accuracy" in overview and "sloserve demo" in overview


def test_add_sklearn_then_list_then_refuse_junk(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    x, y = load_wine(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    pkl = tmp_path / "wine.pkl"
    pkl.write_bytes(pickle.dumps(model))
    added = run("add", str(pkl), "--name", "wine", "--repository", str(repo), home=tmp_path)
    assert added.returncode == 0, added.stderr
    listed = run("models", "--repository", str(repo), home=tmp_path)
    assert "wine" in listed.stdout and "FP32" in listed.stdout and "[-1, 13]" in listed.stdout

    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a model")
    before = sorted(p.name for p in repo.rglob("*"))
    refused = run("add", str(junk), "--name", "junk", "--repository", str(repo), home=tmp_path)
    assert refused.returncode != 0
    assert "not an ONNX model" in refused.stderr
    assert sorted(p.name for p in repo.rglob("*")) == before
    duplicate = run("add", str(pkl), "--name", "wine", "--repository", str(repo), home=tmp_path)
    assert duplicate.returncode != 0 and "--replace" in duplicate.stderr


def test_serve_builds_the_demo_answers_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    env = {**os.environ, "SLOSERVE_HOME": str(tmp_path), "SLOSERVE_HTTP_PORT": str(ports[0])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sloserve.cli", "demo", "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        printed = _printed_until(proc, "Press Ctrl+C to stop.")
        assert "progress.py:" not in printed  # log lines carry the time, not the source line
        assert (
            " INFO root:" not in printed
        )  # the libraries log warnings only (onnxruntime's quantizer: a line a tensor)
        assert "sloserve.control.lifecycle: model digits" in printed  # sloserve's own info lines stay
        _run_demo_calls(printed)
        x = np.load(tmp_path / "repository" / "digits" / "validation.npz")["X"][:3].astype(np.float32)
        inp = httpclient.InferInput("input", [3, 64], "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("digits", [inp]).as_numpy("label").shape == (3,)
        assert "sloserve_request_success_total" in httpx.get(f"http://127.0.0.1:{ports[2]}/metrics").text
        proc.send_signal(signal.SIGSTOP)  # its host stops it: the next look of the loop finds a stall
        time.sleep(0.2)
        proc.send_signal(signal.SIGCONT)
        for _ in range(20):  # the look may come a turn after the first scrape
            stalled = re.search(
                r"^sloserve_event_loop_stalled_seconds_total (\S+)$",
                httpx.get(f"http://127.0.0.1:{ports[2]}/metrics").text,
                re.MULTILINE,
            )
            assert stalled is not None
            if float(stalled.group(1)) > 0.1:
                break
            time.sleep(0.05)
        assert 0.1 < float(stalled.group(1)) < 10.0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _printed_until(proc: subprocess.Popen[str], last: str) -> str:
    """What ``proc`` printed up to and including the line ``last``."""
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or lines[-1].strip() != last:
        line = proc.stdout.readline()
        assert line, "".join(lines)  # it ended first
        lines.append(line)
    return "".join(lines)


def _run_demo_calls(printed: str) -> None:
    """Every call the demo printed, pasted as a user would: each curl command as the shell would split it, sent
    with httpx (the tests do not rely on a curl binary), and the tritonclient script run with this Python."""
    calls = printed[printed.index("Try it") :]
    commands = [shlex.split(line) for line in calls.replace("\\\n", " ").splitlines() if line.strip()[:5] == "curl "]
    answers, urls = [], []
    for argv in commands:
        url = next(arg for arg in argv if arg.startswith("http://"))
        urls.append(url)
        if "-d" in argv:  # curl's default content type unless one is given
            header = argv[argv.index("-H") + 1] if "-H" in argv else "Content-Type: application/x-www-form-urlencoded"
            key, value = header.split(": ", 1)
            answers.append(httpx.post(url, content=argv[argv.index("-d") + 1], headers={key: value}))
        else:
            answers.append(httpx.get(url))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    chosen, pinned, variants = (a.json() for a in answers)
    ids = {v["id"]: v for v in variants}
    for answer in (chosen, pinned):
        assert answer["outputs"][0]["data"] == [0]  # the image is a 0
        assert answer["model_version"] == answer["parameters"]["variant"] in ids
    assert ids[chosen["model_version"]]["accuracy"] >= 0.95  # the SLO's accuracy floor
    assert urls[1].endswith(f"/versions/{pinned['model_version']}/infer")
    script = calls[calls.index("<<'PY'\n") + 6 : calls.index("\nPY\n")]
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    labels, variant = ran.stdout.rsplit("]", 1)
    assert len(labels.strip("[ ").split()) == 4 and variant.strip() in ids


@pytest.mark.parametrize("flag", ["--http-port", "--grpc-port", "--metrics-port"])
def test_a_port_in_use_is_named_with_its_flag(tmp_path: Path, flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0", flag: str(port)}
        result = run("serve", "--repository", str(tmp_path), *[a for kv in ports.items() for a in kv], home=tmp_path)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} ({flag})" in result.stderr, result.stderr
    assert f"choose another {flag}" in result.stderr


@pytest.mark.parametrize("flag", [["--http-port", "99999"], ["--log-level", "loud"]])
def test_bad_settings_are_reported(tmp_path: Path, flag: list[str]) -> None:
    result = run("serve", "--repository", str(tmp_path), *flag, home=tmp_path)
    assert result.returncode == 2
    assert "error" in result.stderr
