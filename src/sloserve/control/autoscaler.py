"""The autoscaling loop: data-plane load in, :func:`decide_scaling` decides, the lifecycle acts.

Every ``interval_s`` it asks the data plane for each served variant's load (rows
per second, queueing delay, replicas) and calls the pure policy once for all
models together, so they share one CPU budget (``--cpus``). Every decision is
logged and counted as a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from sloserve.clock import Clock
from sloserve.errors import SloserveError
from sloserve.policy.autoscale import AutoscaleConfig, AutoscaleState, ScaleDecision, VariantLoad, decide_scaling

log = logging.getLogger(__name__)

LoadSource = Callable[[], Mapping[str, Sequence[VariantLoad]]]
"""Each model's variants with their current load (from the data plane)."""
DecisionSink = Callable[[str, ScaleDecision], None]


class Scaler(Protocol):
    async def scale(self, name: str, version: str, replicas: int) -> None: ...


class Autoscaler:
    def __init__(
        self,
        scaler: Scaler,
        loads: LoadSource,
        config: AutoscaleConfig,
        clock: Clock,
        *,
        interval_s: float = 1.0,
        on_decision: DecisionSink | None = None,
    ) -> None:
        self._scaler = scaler
        self._loads = loads
        self._config = config
        self._clock = clock
        self._interval_s = interval_s
        self._on_decision = on_decision
        self._state = AutoscaleState()
        self._task: asyncio.Task[None] | None = None
        self.decisions: list[tuple[str, ScaleDecision]] = []
        """Every decision taken, oldest first (bounded)."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            try:
                await self.tick()
            except Exception:  # the loop must survive a bad tick; the next one tries again
                log.exception("autoscaler tick failed")

    async def tick(self) -> list[tuple[str, ScaleDecision]]:
        per_model = self._loads()
        loads: list[VariantLoad] = []
        owner: dict[str, tuple[str, str]] = {}
        for model, variants in per_model.items():
            for load in variants:
                key = f"{model}/{load.id}"
                owner[key] = (model, load.id)
                loads.append(
                    VariantLoad(
                        key,
                        load.replicas,
                        load.arrival_rps,
                        load.capacity_rps,
                        load.queue_ms,
                        load.cpus_per_replica,
                        load.load_ms,
                        load.min_replicas,
                    )
                )
        decisions, self._state = decide_scaling(loads, self._state, self._clock.now(), self._config)
        taken = []
        for decision in decisions:
            model, variant = owner[decision.variant]
            log.info(
                "autoscaler: %s %s/%s %d -> %d replicas: %s",
                decision.action,
                model,
                variant,
                decision.previous,
                decision.replicas,
                decision.reason,
            )
            try:
                await self._scaler.scale(model, variant, decision.replicas)
            except SloserveError as error:
                log.warning("autoscaler: could not scale %s/%s: %s", model, variant, error.message)
                continue
            local = ScaleDecision(variant, decision.replicas, decision.previous, decision.action, decision.reason)
            taken.append((model, local))
            if self._on_decision is not None:
                self._on_decision(model, local)
        self.decisions = (self.decisions + taken)[-1000:]
        return taken
