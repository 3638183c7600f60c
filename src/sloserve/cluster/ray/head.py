"""LocalRayHead: a one-node Ray cluster on 127.0.0.1, for tests, benchmarks and trying ``--ray-address``.

Started with ``ray start --head`` with a bounded footprint (CPUs, object store,
no dashboard, every port free and on the loopback interface) and its own
temporary directory. Stopped by process id: the processes whose command line
names that directory or this head's address, and their children. (``ray stop``
would stop every Ray process of the user on the machine, not just this cluster.)

:data:`LOOPBACK_ENV` makes Ray use 127.0.0.1 as the node's address instead of
the machine's network address, so nothing leaves loopback; a process that
connects to this head needs it too (before it imports ray).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the node's address is 127.0.0.1
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",  # a loopback-only test cluster: no token, whatever ~/.ray holds
    "RAY_ENABLE_AUTO_CONNECT": "0",  # a Ray call while disconnected fails instead of starting a cluster
}
"""Environment for the head and for every process that connects to it (set before ray is imported)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        raise FileNotFoundError("the `ray` command is not installed: pip install 'sloserve[ray]'")
    return found


class LocalRayHead:
    def __init__(
        self,
        temp_dir: Path,
        *,
        num_cpus: int = 2,
        object_store_bytes: int = 100_000_000,
        port: int | None = None,
    ) -> None:
        self.temp_dir = temp_dir
        self.num_cpus = num_cpus
        self.object_store_bytes = object_store_bytes
        self.port = port or free_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> LocalRayHead:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        command = [
            ray_executable(),
            "start",
            "--head",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        env = {**os.environ, **LOOPBACK_ENV}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"`ray start --head` failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
        return self

    def processes(self) -> list[int]:
        """Process ids of this cluster: those naming its directory or address, and their descendants."""
        marks = (str(self.temp_dir).encode(), f"--address={self.address}".encode())
        parents: dict[int, int] = {}
        roots: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                cmdline = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            if pid != os.getpid() and any(mark in cmdline for mark in marks):
                roots.append(pid)
        found = set(roots)
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in found and pid != os.getpid()}
            grew = not children <= found
            found |= children
        return sorted(found)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process of this cluster, the GCS last (a raylet whose GCS went first waits 10 s
        for it), then SIGKILL what is left after ``grace_s``."""
        pids = self.processes()
        gcs = [pid for pid in pids if b"gcs_server" in _cmdline(pid)]
        for group in ([pid for pid in pids if pid not in gcs], gcs):
            for pid in group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(_running(pid) for pid in group):
                time.sleep(0.05)
        for _ in range(3):  # and anything that came up meanwhile
            survivors = [pid for pid in {*pids, *self.processes()} if _running(pid)]
            if not survivors:
                return
            for pid in survivors:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
