"""The simulated replicas as a whole: the CPU budget they share, starting and stopping them, the autoscaler.

A replica starts warm (set-up), on demand (admission chose a variant with none) or
when the autoscaler asks; a started one serves after its cold start (``load_ms``):
the engine is told when, and schedules its arrival. Every ``autoscale_interval_s``
:meth:`Fleet.autoscale` gives :func:`~sloserve.policy.autoscale.decide_scaling` a
:class:`~sloserve.policy.autoscale.VariantLoad` per variant and applies the targets
it returns, stops first. A stopped replica that is running a batch leaves when the
batch is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sloserve.errors import InvalidArgumentError
from sloserve.policy.autoscale import AutoscaleState, ScaleDecision, VariantLoad, capacity_within_slo, decide_scaling
from sloserve.policy.selection import Candidate, Choice, NoChoice, Slo, best_effort, feasible_when_idle
from sloserve.sim.config import SimConfig
from sloserve.sim.pool import Pool
from sloserve.sim.selector import Selector


class Fleet:
    def __init__(
        self,
        config: SimConfig,
        pools: Sequence[Pool],
        selector: Selector,
        tightest_slo_ms: float | None,
        on_starting: Callable[[float, Pool], None],
        on_shrunk: Callable[[Pool], None],
    ) -> None:
        self.config = config
        self.pools = pools
        self.selector = selector
        self.tightest_slo_ms = tightest_slo_ms
        self.on_starting = on_starting
        """Told the time (ms) a replica of the pool that starts now will be ready."""
        self.on_shrunk = on_shrunk
        """Told a pool has lost replicas, up or coming: its queue may be left with none to serve it."""
        self.cpus_used = 0
        self.autoscale_cfg = config.autoscale_config()
        self.autoscale_state = AutoscaleState()
        self.samples: list[tuple[float, tuple[int, ...]]] = []
        self.decisions: list[tuple[float, ScaleDecision]] = []

    @property
    def cpus_free(self) -> int:
        return self.config.cpus - self.cpus_used

    def start_warm(self, pool: Pool, count: int) -> None:
        pool.ready += count
        pool.free += count
        self.cpus_used += count * pool.variant.cpus
        pool.max_replicas = max(pool.max_replicas, pool.provisioned)

    def start_initial(self, fifo_pool: Pool | None, models: int, slos: Sequence[Slo]) -> None:
        """The replicas up at the start: ``fixed_replicas`` (or as many as fit) of the fixed policy's variant,
        ``initial_replicas`` of every variant, or else one of each class's idle choice, within the budget."""
        cfg = self.config
        if fifo_pool is not None:
            pool = fifo_pool
            count = cfg.fixed_replicas if cfg.fixed_replicas is not None else cfg.cpus // pool.variant.cpus
            if count < 1 or count * pool.variant.cpus > cfg.cpus:
                raise InvalidArgumentError(
                    f"{count} replica(s) of {pool.key} need {count * pool.variant.cpus} CPUs; --cpus is {cfg.cpus}"
                )
            self.start_warm(pool, count)
            return
        if cfg.initial_replicas is not None:
            need = sum(p.variant.cpus for p in self.pools) * cfg.initial_replicas
            if need > cfg.cpus:
                raise InvalidArgumentError(
                    f"--initial-replicas {cfg.initial_replicas} for {len(self.pools)} variants needs {need} CPUs; "
                    f"--cpus is {cfg.cpus}"
                )
            for pool in self.pools:
                self.start_warm(pool, cfg.initial_replicas)
            return
        for m in range(models):
            idle = [self._idle_candidate(p) for p in self.pools if p.model == m]
            for slo in slos:
                choice = feasible_when_idle(idle, slo)
                if isinstance(choice, NoChoice) and slo.best_effort:
                    choice = best_effort(idle, slo)
                if isinstance(choice, Choice):
                    pool = self.selector.by_id[m][choice.variant]
                    if pool.ready == 0 and self.cpus_used + pool.variant.cpus <= cfg.cpus:
                        self.start_warm(pool, 1)

    @staticmethod
    def _idle_candidate(p: Pool) -> Candidate:
        v = p.variant
        return Candidate(v.id, v.accuracy, v.intercept_ms, v.per_row_ms, v.cost_cpu_s_per_1k)

    def start(self, p: Pool, count: int, now: float) -> None:
        for _ in range(count):
            ready_at = now + p.variant.load_ms
            p.starting.append(ready_at)
            self.cpus_used += p.variant.cpus
            self.on_starting(ready_at, p)
        p.max_replicas = max(p.max_replicas, p.provisioned)
        self.selector.everything_changed()

    def stop(self, p: Pool, count: int) -> None:
        while count and p.starting:
            p.starting.pop()
            self.cpus_used -= p.variant.cpus
            count -= 1
        while count and p.free:
            p.free -= 1
            self.leave(p)
            count -= 1
        while count and p.busy > p.retiring:
            p.retiring += 1  # leaves when its batch is done
            count -= 1
        self.on_shrunk(p)
        self.selector.everything_changed()

    def leave(self, p: Pool) -> None:
        p.ready -= 1
        self.cpus_used -= p.variant.cpus
        self.on_shrunk(p)
        self.selector.everything_changed()

    def autoscale(self, now: float) -> None:
        """An autoscaler tick at ``now`` (ms): the load of every variant since the last one, then its decisions."""
        interval_s = self.config.autoscale_interval_s
        now_s = now / 1000.0
        loads = []
        for p in self.pools:
            v = p.variant
            # What the server exports: the mean time requests waited before their batch started.
            queue_ms = p.queue_wait_ms / p.queue_waits if p.queue_waits else 0.0
            p.queue_wait_ms, p.queue_waits = 0.0, 0
            loads.append(
                VariantLoad(
                    p.key,
                    p.provisioned,
                    (p.routed_rows + p.refused_rows) / interval_s,
                    capacity_within_slo(
                        v.intercept_ms, v.per_row_ms, v.max_batch, self.tightest_slo_ms, v.capacity_rps
                    ),
                    queue_ms,
                    v.cpus,
                    v.load_ms,
                )
            )
            p.routed_rows = p.refused_rows = 0
        decisions, self.autoscale_state = decide_scaling(loads, self.autoscale_state, now_s, self.autoscale_cfg)
        targets: dict[str, int] = {}
        for decision in decisions:
            self.decisions.append((now_s, decision))
            targets[decision.variant] = decision.replicas
        by_key = {p.key: p for p in self.pools}
        for key, target in targets.items():
            pool = by_key[key]
            if target < pool.provisioned:
                self.stop(pool, pool.provisioned - target)
        for key, target in targets.items():
            pool = by_key[key]
            if target > pool.provisioned:
                self.start(pool, target - pool.provisioned, now)

    def sample(self, now: float) -> None:
        self.samples.append((now / 1000.0, tuple(p.provisioned for p in self.pools)))
