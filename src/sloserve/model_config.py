"""The declarative model configuration stored beside each artifact.

A model folder holds ``config.json`` (this schema) and ``model.onnx``. Shapes are
full tensor shapes including the batch dimension, ``-1`` for a variable
dimension, exactly as model metadata reports them on the wire. Parsing is pure
and strict: unknown keys and bad values are reported with the field's path.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from sloserve.datatypes import DATATYPES
from sloserve.errors import InvalidArgumentError
from sloserve.types import ModelName

PLATFORM_ONNX = "onnx_onnxv1"
REPLICA_AUTO, REPLICA_INLINE, REPLICA_PROCESS = "auto", "inline", "process"
REPLICA_KINDS = (REPLICA_AUTO, REPLICA_INLINE, REPLICA_PROCESS)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Dynamic batching: merge requests up to ``max_batch_size`` rows.

    While a replica is free, a request without a latency deadline waits at most
    ``max_queue_delay_us`` for others (0: dispatch at once), and a request with one
    at most a fifth of its latency SLO beyond 5 ms, capped at ``max_slo_hold_us`` (0: at once;
    :func:`sloserve.policy.batching.hold_ms`); never past the last moment a full
    batch could still meet the earliest deadline waiting. Requests still merge
    while every replica is busy. ``max_queue_size`` bounds waiting requests; past
    it, requests are refused with RESOURCE_EXHAUSTED.
    """

    max_queue_delay_us: int = 0
    max_queue_size: int = 1024
    max_slo_hold_us: int = 2000


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Prediction cache: answers for repeated inputs, bounded in bytes, expiring after ``ttl_s``."""

    enabled: bool = False
    ttl_s: float = 60.0
    max_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HedgingConfig:
    """Hedged requests: a backup batch on another replica once the first is slower than its live quantile."""

    enabled: bool = True
    quantile: float = 0.95
    budget: float = 0.05
    """Extra work hedging may spend, as a fraction of batches."""


@dataclass(frozen=True, slots=True)
class SloConfig:
    """The SLO a request gets when it states none (``None``: no latency bound / no accuracy floor)."""

    latency_slo_ms: float | None = None
    min_accuracy: float | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: ModelName
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = PLATFORM_ONNX
    max_batch_size: int = 64
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    instance_count: int = 1
    intra_op_threads: int = 1
    cache: CacheConfig = field(default_factory=CacheConfig)
    hedging: HedgingConfig = field(default_factory=HedgingConfig)
    default_slo: SloConfig = field(default_factory=SloConfig)
    replica_kind: str = REPLICA_AUTO
    """Where a replica runs: ``process`` (a worker process of its own), ``inline`` (in the server's process,
    on its event loop: no round trip per batch, for models whose batches take well under a millisecond), or
    ``auto`` (inline when the variant's files hold at most 1 MiB)."""
    _inputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    _outputs_by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "platform": self.platform,
            "max_batch_size": self.max_batch_size,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "dynamic_batching": asdict(self.batching),
            "instance_count": self.instance_count,
            "intra_op_threads": self.intra_op_threads,
            "cache": asdict(self.cache),
            "hedging": asdict(self.hedging),
            "default_slo": asdict(self.default_slo),
            "replica_kind": self.replica_kind,
        }

    def __post_init__(self) -> None:
        # By name, the first of each (every request looks its tensors up: a dict, not a scan)
        object.__setattr__(self, "_inputs_by_name", {t.name: t for t in reversed(self.inputs)})
        object.__setattr__(self, "_outputs_by_name", {t.name: t for t in reversed(self.outputs)})

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs_by_name.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self._outputs_by_name.get(name)


def validate_model_name(name: str) -> ModelName:
    if not _NAME_RE.match(name):
        raise InvalidArgumentError(
            f"invalid model name {name!r}: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, at most 128 characters"
        )
    return ModelName(name)


def _expect(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise InvalidArgumentError(f"config {where}: {what}")


def _int(raw: dict[str, Any], key: str, where: str, default: int, minimum: int) -> int:
    value = raw.get(key, default)
    _expect(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{where}{key}",
        f"expected an integer >= {minimum}, got {value!r}",
    )
    return int(value)


def _known_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(raw) - allowed)
    _expect(not extra, where or "top level", f"unknown keys {extra}; allowed: {sorted(allowed)}")


def _tensor(raw: Any, where: str) -> TensorSpec:
    _expect(isinstance(raw, dict), where, "expected an object with name, datatype and shape")
    _known_keys(raw, {"name", "datatype", "shape"}, where)
    name = raw.get("name")
    _expect(isinstance(name, str) and bool(name), f"{where}.name", "expected a non-empty string")
    datatype = raw.get("datatype")
    _expect(datatype in DATATYPES, f"{where}.datatype", f"expected one of {list(DATATYPES)}, got {datatype!r}")
    shape = raw.get("shape")
    _expect(
        isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape),
        f"{where}.shape",
        f"expected a list of integers >= -1, got {shape!r}",
    )
    return TensorSpec(name=str(name), datatype=str(datatype), shape=tuple(shape))


def parse_model_config(raw: Any) -> ModelConfig:
    """Validate a decoded ``config.json`` and build a :class:`ModelConfig`."""
    _expect(isinstance(raw, dict), "top level", "expected a JSON object")
    _known_keys(
        raw,
        {
            "name",
            "platform",
            "max_batch_size",
            "inputs",
            "outputs",
            "dynamic_batching",
            "instance_count",
            "intra_op_threads",
            "cache",
            "hedging",
            "default_slo",
            "replica_kind",
        },
        "",
    )
    name = raw.get("name")
    _expect(isinstance(name, str), "name", "expected a string")
    platform = raw.get("platform", PLATFORM_ONNX)
    _expect(platform == PLATFORM_ONNX, "platform", f"only {PLATFORM_ONNX!r} is supported, got {platform!r}")
    for key in ("inputs", "outputs"):
        _expect(isinstance(raw.get(key), list) and len(raw[key]) > 0, key, "expected a non-empty list")
    inputs = tuple(_tensor(t, f"inputs[{i}]") for i, t in enumerate(raw["inputs"]))
    outputs = tuple(_tensor(t, f"outputs[{i}]") for i, t in enumerate(raw["outputs"]))
    for key, tensors in (("inputs", inputs), ("outputs", outputs)):
        names = [t.name for t in tensors]
        _expect(len(set(names)) == len(names), key, f"duplicate tensor names in {names}")
    max_batch_size = _int(raw, "max_batch_size", "", 64, 0)
    if max_batch_size > 0:
        for t in (*inputs, *outputs):
            _expect(
                len(t.shape) >= 1 and t.shape[0] == -1,
                f"tensor {t.name!r}.shape",
                f"with max_batch_size > 0 the first dimension must be -1 (the batch), got {list(t.shape)}",
            )
    batching_raw = raw.get("dynamic_batching", {})
    _expect(isinstance(batching_raw, dict), "dynamic_batching", "expected an object")
    _known_keys(batching_raw, {"max_queue_delay_us", "max_queue_size", "max_slo_hold_us"}, "dynamic_batching")
    batching = BatchingConfig(
        max_queue_delay_us=_int(batching_raw, "max_queue_delay_us", "dynamic_batching.", 0, 0),
        max_queue_size=_int(batching_raw, "max_queue_size", "dynamic_batching.", 1024, 1),
        max_slo_hold_us=_int(batching_raw, "max_slo_hold_us", "dynamic_batching.", 2000, 0),
    )
    replica_kind = raw.get("replica_kind", REPLICA_AUTO)
    _expect(
        replica_kind in REPLICA_KINDS, "replica_kind", f"expected one of {list(REPLICA_KINDS)}, got {replica_kind!r}"
    )
    return ModelConfig(
        name=validate_model_name(str(name)),
        platform=PLATFORM_ONNX,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        batching=batching,
        instance_count=_int(raw, "instance_count", "", 1, 1),
        intra_op_threads=_int(raw, "intra_op_threads", "", 1, 1),
        cache=_section(raw, "cache", CacheConfig()),
        hedging=_section(raw, "hedging", HedgingConfig()),
        default_slo=_section(raw, "default_slo", SloConfig()),
        replica_kind=str(replica_kind),
    )


_RANGES: dict[str, tuple[float, float]] = {
    "quantile": (0.5, 0.999),
    "budget": (0.0, 1.0),
    "min_accuracy": (0.0, 1.0),
}

S = TypeVar("S", CacheConfig, HedgingConfig, SloConfig)


def _section(raw: dict[str, Any], key: str, default: S) -> S:
    """Parse an optional sub-object whose fields (bool, int, float or optional float) default to ``default``'s."""
    section = raw.get(key, {})
    _expect(isinstance(section, dict), key, "expected an object")
    allowed = {f.name for f in fields(default)}
    _known_keys(section, allowed, key)
    values: dict[str, Any] = {}
    for name in allowed:
        if name not in section:
            continue
        value, where, current = section[name], f"{key}.{name}", getattr(default, name)
        if isinstance(current, bool):
            _expect(isinstance(value, bool), where, f"expected true or false, got {value!r}")
        elif value is None:
            _expect(current is None, where, "may not be null")
        else:
            _expect(
                isinstance(value, int | float) and not isinstance(value, bool) and value >= 0,
                where,
                f"expected a number >= 0, got {value!r}",
            )
            low, high = _RANGES.get(name, (0.0, float("inf")))
            _expect(low <= value <= high, where, f"expected a value in [{low}, {high}], got {value!r}")
            if name == "latency_slo_ms":
                _expect(value > 0, where, "a latency SLO must be positive")
            value = int(value) if isinstance(current, int) else float(value)
        values[name] = value
    return replace(default, **values)
