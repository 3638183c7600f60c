"""Server settings: command-line flags over ``SLOSERVE_*`` environment variables over defaults.

Read once at start-up (:func:`load_settings`), then passed down as a frozen value;
nothing reads the environment at import time or on the request path. Every field
documents itself: the CLI builds its flags and ``--help`` text from this table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sloserve.errors import InvalidArgumentError


def default_home(env: Mapping[str, str]) -> Path:
    """``$SLOSERVE_HOME``, else ``$XDG_CACHE_HOME/sloserve``, else ``~/.cache/sloserve``."""
    if env.get("SLOSERVE_HOME"):
        return Path(env["SLOSERVE_HOME"]).expanduser()
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "sloserve"


@dataclass(frozen=True, slots=True)
class Option:
    flag: str
    env: str
    help: str


@dataclass(frozen=True, slots=True)
class Settings:
    repository: Path | None = None
    home: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_body_mb: float = 64.0
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    cpus: int = 0
    """CPU budget for replicas across all models (0: every core of this machine)."""
    autoscale_interval_s: float = 1.0
    ray_address: str = ""
    """A Ray cluster's GCS address (host:port): replicas become Ray actors there ("": local worker processes)."""

    @property
    def home_dir(self) -> Path:
        """The home given, else the default one (for settings built without :func:`load_settings`)."""
        return self.home if self.home is not None else default_home(os.environ)

    @property
    def registry_path(self) -> Path:
        return self.home_dir / "registry.sqlite3"

    @property
    def cpu_budget(self) -> int:
        return self.cpus if self.cpus > 0 else (os.cpu_count() or 1)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


OPTIONS: dict[str, Option] = {
    "repository": Option(
        "--repository",
        "SLOSERVE_REPOSITORY",
        "model repository folder (default: the built-in demo repository under the sloserve home)",
    ),
    "home": Option(
        "--home",
        "SLOSERVE_HOME",
        "sloserve home: the registry database and the demo repository (default $XDG_CACHE_HOME/sloserve)",
    ),
    "host": Option("--host", "SLOSERVE_HOST", "address to bind every port to"),
    "http_port": Option("--http-port", "SLOSERVE_HTTP_PORT", "HTTP/REST port (0: any free port)"),
    "grpc_port": Option("--grpc-port", "SLOSERVE_GRPC_PORT", "gRPC port (0: any free port)"),
    "metrics_port": Option("--metrics-port", "SLOSERVE_METRICS_PORT", "Prometheus metrics port (0: any free port)"),
    "max_body_mb": Option(
        "--max-body-mb", "SLOSERVE_MAX_BODY_MB", "largest request body accepted, in MiB (larger: 413)"
    ),
    "shutdown_grace_s": Option(
        "--shutdown-grace-s", "SLOSERVE_SHUTDOWN_GRACE_S", "on SIGINT/SIGTERM, seconds to finish in-flight requests"
    ),
    "log_level": Option(
        "--log-level", "SLOSERVE_LOG_LEVEL", "sloserve's logging: debug, info, warning or error (libraries': warnings)"
    ),
    "cpus": Option(
        "--cpus", "SLOSERVE_CPUS", "CPU budget the autoscaler keeps replicas within (0: all cores of this machine)"
    ),
    "autoscale_interval_s": Option(
        "--autoscale-interval-s", "SLOSERVE_AUTOSCALE_INTERVAL_S", "seconds between autoscaler decisions (0: off)"
    ),
    "ray_address": Option(
        "--ray-address",
        "SLOSERVE_RAY_ADDRESS",
        "Ray cluster address (host:port of its head): run replicas as Ray actors there; needs sloserve[ray]",
    ),
}


def _convert(name: str, raw: Any, default: Any) -> Any:
    if name in ("repository", "home"):
        return None if raw in (None, "") else Path(str(raw)).expanduser()
    try:
        return type(default)(raw)
    except (TypeError, ValueError):
        option = OPTIONS[name]
        raise InvalidArgumentError(
            f"{option.flag} / {option.env}: expected {type(default).__name__}, got {raw!r}"
        ) from None


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Flags (None = not given) over environment variables over defaults."""
    env = os.environ if env is None else env
    defaults = Settings()
    values: dict[str, Any] = {}
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        raw = flags.get(f.name)
        if raw is None:
            raw = env.get(OPTIONS[f.name].env)
        values[f.name] = default if raw is None else _convert(f.name, raw, default)
    if values["home"] is None:
        values["home"] = default_home(env)
    settings = Settings(**values)
    for port in ("http_port", "grpc_port", "metrics_port"):
        value = getattr(settings, port)
        if not 0 <= value <= 65535:
            raise InvalidArgumentError(f"{OPTIONS[port].flag}: {value} is not a port number")
    if settings.cpus < 0 or settings.autoscale_interval_s < 0:
        raise InvalidArgumentError("--cpus and --autoscale-interval-s must be >= 0")
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise InvalidArgumentError(f"--log-level: {settings.log_level!r} is not one of debug, info, warning, error")
    return settings
