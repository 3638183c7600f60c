"""``sloserve cluster status``: the Ray cluster's nodes, sloserve replicas and resource use."""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.table import Table

from sloserve.cli.output import console, settings_of
from sloserve.cluster.ray.backend import RAY_NAMESPACE, CoreRayBackend
from sloserve.cluster.ray.status import ClusterStatus, read_status
from sloserve.errors import InvalidArgumentError, UnavailableError


def run(args: argparse.Namespace) -> int:
    address = settings_of(args).ray_address
    if not address:
        raise InvalidArgumentError("give the cluster's address: --ray-address HOST:PORT or SLOSERVE_RAY_ADDRESS")
    status = asyncio.run(_read(address))
    if args.json:
        console.print_json(json.dumps(status.to_dict()))
    else:
        _print(status)
    return 0


async def _read(address: str) -> ClusterStatus:
    backend = CoreRayBackend(address)
    if not await backend.reachable(5.0):
        raise UnavailableError(f"cannot reach the Ray cluster at {address}")
    await backend.connect(RAY_NAMESPACE)
    try:
        return await read_status(backend, RAY_NAMESPACE)
    finally:
        await backend.disconnect()


def _short(node_id: str) -> str:
    return node_id[:12] if node_id else "-"


def _print(status: ClusterStatus) -> None:
    nodes = Table(title=f"Ray cluster {status.address}: nodes")
    for column in ("node", "address", "alive", "CPU", "GPU", "object store", "replicas", "replica CPU"):
        nodes.add_column(column, justify="right" if column not in ("node", "address") else "left", no_wrap=True)
    for n in status.nodes:
        nodes.add_row(
            _short(n.node_id),
            n.address,
            "yes" if n.alive else "[red]no[/]",
            f"{n.resources.get('CPU', 0.0):g}",
            f"{n.resources.get('GPU', 0.0):g}",
            f"{n.resources.get('object_store_memory', 0.0) / 2**20:.0f} MiB",
            str(n.replicas),
            f"{n.replica_cpus:g}",
        )
    console.print(nodes)

    per_variant = status.per_variant()
    variants = Table(title="sloserve replicas per variant and node")
    variants.add_column("model", no_wrap=True)
    variants.add_column("variant", no_wrap=True)
    variants.add_column("replicas", justify="right")
    variants.add_column("nodes (replicas)")
    for (model, version), per_node in sorted(per_variant.items()):
        where = ", ".join(f"{_short(node)} ({count})" for node, count in sorted(per_node.items()))
        variants.add_row(model, version, str(sum(per_node.values())), where)
    if not per_variant:
        variants.add_row("(none)", "", "0", "")
    console.print(variants)

    replicas = Table(title=f"replica actors (namespace {status.namespace})")
    for column in ("actor", "state", "node", "pid", "CPU", "GPU", "front ends", "batches", "rows"):
        right = column in ("pid", "CPU", "GPU", "batches", "rows")
        replicas.add_column(column, justify="right" if right else "left", no_wrap=column in ("actor", "node"))
    for r in status.replicas:
        replicas.add_row(
            r.name,
            r.state if r.state == "alive" else f"[yellow]{r.state}[/]",
            _short(r.node_id),
            str(r.pid or "-"),
            f"{r.num_cpus:g}",
            f"{r.num_gpus:g}",
            str(len(r.frontends)),
            str(r.batches),
            str(r.rows),
        )
    console.print(replicas)

    total, free = status.total, status.available
    used = {key: total[key] - free.get(key, 0.0) for key in ("CPU", "GPU") if total.get(key)}
    parts = [f"{key} {used[key]:g} of {total[key]:g} in use" for key in used]
    store = total.get("object_store_memory", 0.0)
    if store:
        parts.append(
            f"object store {(store - free.get('object_store_memory', 0.0)) / 2**20:.1f} of {store / 2**20:.0f} MiB"
        )
    console.print("resources: " + ("; ".join(parts) or "none reported"))
