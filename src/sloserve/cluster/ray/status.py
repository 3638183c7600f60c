"""What ``sloserve cluster status`` reports: nodes, sloserve replicas per variant and node, resources.

Read from any process connected to the cluster (no front end needed): the nodes
and resources from the GCS, the replicas by listing the named actors of the
``sloserve`` namespace and asking each to describe itself (its node, pid, the
front ends holding a lease, batches served). Ray's state API would need the
dashboard (``ray[default]``); this needs only ``ray``. An actor that does not
answer within ``timeout_s`` is listed as ``pending`` (not placed yet, or still
loading: a full cluster shows here).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from sloserve.cluster.ray.backend import BackendError, NodeInfo, RayBackend


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    name: str
    state: str
    """alive, pending (not placed or loading) or gone."""
    model: str = ""
    version: str = ""
    index: int = -1
    node_id: str = ""
    pid: int | None = None
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    frontends: tuple[str, ...] = ()
    batches: int = 0
    rows: int = 0


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    address: str
    alive: bool
    resources: dict[str, float]
    replicas: int
    replica_cpus: float
    replica_gpus: float


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    address: str
    namespace: str
    nodes: tuple[NodeStatus, ...]
    replicas: tuple[ReplicaStatus, ...]
    total: dict[str, float] = field(default_factory=dict)
    available: dict[str, float] = field(default_factory=dict)

    def per_variant(self) -> dict[tuple[str, str], dict[str, int]]:
        """(model, version) -> node id -> live replicas."""
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for r in self.replicas:
            if r.state == "alive":
                per_node = counts.setdefault((r.model, r.version), {})
                per_node[r.node_id] = per_node.get(r.node_id, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_variant"] = [
            {"model": model, "version": version, "nodes": nodes}
            for (model, version), nodes in sorted(self.per_variant().items())
        ]
        return data


async def read_status(backend: RayBackend, namespace: str, timeout_s: float = 5.0) -> ClusterStatus:
    """Everything ``cluster status`` shows, from a connected backend."""
    nodes, (total, available), names = await asyncio.gather(
        backend.nodes(), backend.resources(), backend.actor_names(namespace)
    )
    replicas = await asyncio.gather(*(_describe(backend, name, namespace, timeout_s) for name in names))
    available = {key: available.get(key, 0.0) for key in total}  # Ray leaves out what is all used
    return ClusterStatus(
        backend.address,
        namespace,
        tuple(_node(n, replicas) for n in sorted(nodes, key=lambda n: (not n.alive, n.address))),
        tuple(replicas),
        total,
        available,
    )


async def _describe(backend: RayBackend, name: str, namespace: str, timeout_s: float) -> ReplicaStatus:
    actor = await backend.find_actor(name, namespace)
    if actor is None:
        return ReplicaStatus(name, "gone")
    call = backend.call(actor, "describe", control=True)
    try:
        async with asyncio.timeout(timeout_s):
            info: dict[str, Any] = await asyncio.shield(call.result)
    except TimeoutError:
        return ReplicaStatus(name, "pending")
    except BackendError:
        return ReplicaStatus(name, "gone")
    return ReplicaStatus(
        name,
        "alive",
        str(info.get("model", "")),
        str(info.get("version", "")),
        int(info.get("index", -1)),
        str(info.get("node_id", "")),
        info.get("pid"),
        float(info.get("num_cpus", 0.0)),
        float(info.get("num_gpus", 0.0)),
        tuple(info.get("frontends", ())),
        int(info.get("batches", 0)),
        int(info.get("rows", 0)),
    )


def _node(node: NodeInfo, replicas: list[ReplicaStatus]) -> NodeStatus:
    mine = [r for r in replicas if r.state == "alive" and r.node_id == node.node_id]
    return NodeStatus(
        node.node_id,
        node.address,
        node.alive,
        dict(node.resources),
        len(mine),
        sum(r.num_cpus for r in mine),
        sum(r.num_gpus for r in mine),
    )
