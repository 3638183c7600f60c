"""Public test doubles: FakeClock, FakeReplica."""

from sloserve.testing.fakes import FakeClock, FakeReplica

__all__ = ["FakeClock", "FakeReplica"]
