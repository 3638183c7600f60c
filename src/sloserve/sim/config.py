"""What a simulation runs: the serving policy under test and the knobs of the simulated machine."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sloserve.errors import InvalidArgumentError
from sloserve.policy.autoscale import AutoscaleConfig


@dataclass(frozen=True, slots=True)
class PolicySpec:
    kind: str
    """``modelless``: selection, admission, EDF + AIMD batching and autoscaling, as the server does.
    ``fixed``: every query to ``variant``, plain batching. ``maxbatch``: every query to ``variant``,
    batches of ``max_batch`` rows or after ``timeout_ms``. The last two admit everything, keep no
    deadlines and no autoscaler: they are the baselines the SLO benchmark compares against."""
    variant: str | None = None
    timeout_ms: float = 0.0

    def describe(self) -> str:
        if self.kind == "modelless":
            return "modelless"
        if self.kind == "fixed":
            return f"fixed:{self.variant}"
        return f"maxbatch:{self.variant}:{self.timeout_ms:g}"


def parse_policy(text: str) -> PolicySpec:
    """``modelless``, ``fixed:VARIANT`` or ``maxbatch:VARIANT:TIMEOUT_MS``."""
    parts = text.split(":")
    if parts == ["modelless"]:
        return PolicySpec("modelless")
    if len(parts) == 2 and parts[0] == "fixed" and parts[1]:
        return PolicySpec("fixed", parts[1])
    if len(parts) == 3 and parts[0] == "maxbatch" and parts[1]:
        try:
            timeout = float(parts[2])
        except ValueError:
            timeout = -1.0
        if not (math.isfinite(timeout) and timeout >= 0):
            raise InvalidArgumentError(f"--policy {text!r}: the timeout must be a non-negative number of ms")
        return PolicySpec("maxbatch", parts[1], timeout)
    raise InvalidArgumentError(f"--policy {text!r}: expected modelless, fixed:VARIANT or maxbatch:VARIANT:TIMEOUT_MS")


@dataclass(frozen=True, slots=True)
class SimConfig:
    policy: PolicySpec = PolicySpec("modelless")
    cpus: int = 2
    """CPU budget for all replicas together."""
    seed: int = 0
    noise_sigma: float = 0.1
    """Service time = profile x slowdown x lognormal(median 1, this sigma)."""
    slowdown: float = 1.0
    """True service time / profiled (the drift the live correction has to learn)."""
    autoscale_interval_s: float = 1.0
    autoscale: AutoscaleConfig | None = None
    """None: the policy's defaults with ``cpu_budget=cpus`` and no per-variant cap below it."""
    initial_replicas: int | None = None
    """Model-less: warm replicas per variant at start (None: one for each class's choice on an idle server)."""
    fixed_replicas: int | None = None
    """Fixed/max-batch: replicas of the variant (None: as many as the CPU budget holds)."""
    correction_alpha: float = 0.05
    """Weight of each batch in the EWMA of observed / profiled service time."""
    fast_selection: bool = True
    """Skip work select_variant's answer cannot depend on (see :mod:`sloserve.sim.selector`).
    Off: select_variant over every variant for every arrival; the results are identical."""
    aimd_increase: int = 4
    aimd_decrease: float = 0.5
    frontend_ms: float = 0.0
    """Front-end CPU per request (HTTP parsing, selection, encoding): each request waits its turn at one of
    ``frontend_workers`` FIFO front ends for this long before admission. 0: a front end that costs nothing."""
    frontend_workers: int = 1
    frontend_wake_ms: float = 0.0
    """> 0 makes each front end an event loop (:func:`~sloserve.sim.frontend.frontend_cycles_ms`): it reads what has
    arrived, handles it (``frontend_ms`` a request) and hands it over together, and when it has idled it first
    wakes up, which costs this long (reading what arrives meanwhile too). A request alone on a lightly loaded loop
    pays a whole wake-up, one on a loop that never idles none: the server's cost a query falls with load so. On
    the development VM, `digits` pinned to `fp32`: ~0.034 ms a request and a ~0.07 ms wake-up (`benchmarks/slo.py`
    reads both before its steps). With several front ends each request goes to one at random. 0: FIFO front ends
    that cost ``frontend_ms`` a request."""
    frontend_speed_sigma: float = 0.0
    """How much the machine's speed varies under the front ends: the requests arriving in each
    ``frontend_speed_window_ms`` window cost ``frontend_ms`` x one lognormal factor (mean 1, this sigma), shared
    by every front end. On the 2-core development VM the same server spent 98-130 µs a query in consecutive 3 s
    runs, and near the knee that, not the policy, decides attainment. 0: a steady machine."""
    frontend_speed_window_ms: float = 100.0
    max_slo_hold_ms: float = 2.0
    """Model-less: a request may wait a fifth of its latency SLO beyond 5 ms, at most this, for others to join its
    batch while a replica is free (the model config's ``max_slo_hold_us``; 0: never held)."""

    def autoscale_config(self) -> AutoscaleConfig:
        if self.autoscale is not None:
            return self.autoscale
        return AutoscaleConfig(cpu_budget=self.cpus, max_replicas_per_variant=max(self.cpus, 1))

    def check(self) -> None:
        if self.cpus < 1:
            raise InvalidArgumentError(f"--cpus must be at least 1, got {self.cpus}")
        if not (math.isfinite(self.frontend_ms) and self.frontend_ms >= 0):
            raise InvalidArgumentError(f"--frontend-ms must be a non-negative number, got {self.frontend_ms}")
        if not (math.isfinite(self.max_slo_hold_ms) and self.max_slo_hold_ms >= 0):
            raise InvalidArgumentError(f"--max-slo-hold-ms must be a non-negative number, got {self.max_slo_hold_ms}")
        if not (math.isfinite(self.frontend_speed_sigma) and self.frontend_speed_sigma >= 0):
            raise InvalidArgumentError(f"--frontend-speed-sigma must be >= 0, got {self.frontend_speed_sigma}")
        if not (math.isfinite(self.frontend_speed_window_ms) and self.frontend_speed_window_ms > 0):
            raise InvalidArgumentError(
                f"--frontend-speed-window-ms must be a positive number, got {self.frontend_speed_window_ms}"
            )
        if not (math.isfinite(self.frontend_wake_ms) and self.frontend_wake_ms >= 0):
            raise InvalidArgumentError(f"--frontend-wake-ms must be a non-negative number, got {self.frontend_wake_ms}")
        if self.frontend_workers < 1:
            raise InvalidArgumentError(f"--frontend-workers must be at least 1, got {self.frontend_workers}")
        if not self.autoscale_interval_s > 0:
            raise InvalidArgumentError("--autoscale-interval must be positive")
        if not (self.noise_sigma >= 0 and self.slowdown > 0):
            raise InvalidArgumentError("the noise sigma must be >= 0 and the slowdown > 0")
        if not 0 < self.correction_alpha <= 1:
            raise InvalidArgumentError("the correction weight must be in (0, 1]")
