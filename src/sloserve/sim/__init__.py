"""A discrete-event simulator that replays workloads through sloserve's real policies.

``simulate(families, workload, config)`` runs a :class:`~sloserve.sim.workload.Workload`
against simulated replicas of each :class:`~sloserve.sim.family.Family`'s variants,
whose service times come from their profiles, in simulated time, and summarises it as a
:class:`~sloserve.sim.report.SimReport`. The same inputs and seed give the same report.
See :mod:`sloserve.sim.engine` for what is modelled.
"""

from __future__ import annotations

from collections.abc import Sequence

from sloserve.sim.config import PolicySpec, SimConfig, parse_policy
from sloserve.sim.engine import Simulator
from sloserve.sim.family import Family, SimVariant
from sloserve.sim.report import SimReport, summarize
from sloserve.sim.workload import SloClass, Workload

__all__ = [
    "Family",
    "PolicySpec",
    "SimConfig",
    "SimReport",
    "SimVariant",
    "SloClass",
    "Workload",
    "parse_policy",
    "simulate",
]


def simulate(families: Sequence[Family], workload: Workload, config: SimConfig) -> SimReport:
    return summarize(Simulator(families, workload, config).run())
