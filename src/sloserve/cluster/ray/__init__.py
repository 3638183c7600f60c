"""Replicas as Ray actors: the optional ``ray`` extra (``pip install 'sloserve[ray]'``).

Nothing in this package imports ray at module level: only
:class:`~sloserve.cluster.ray.backend.CoreRayBackend` does, inside its methods,
so ``sloserve serve`` without ``--ray-address`` never loads it.

    backend.py   the one seam to Ray (RayBackend protocol, CoreRayBackend), backend errors
    fake.py      FakeRayBackend: an in-memory cluster for unit tests
    actor.py     ReplicaActor: what runs inside each actor (ONNX Runtime session, leases)
    replica.py   RayReplica: the Replica interface over one named actor
    cluster.py   RayCluster: the connection, its health loop, the replica factory
    status.py    what ``sloserve cluster status`` reports
    head.py      LocalRayHead: a one-node cluster on 127.0.0.1 for tests and benchmarks
"""
