from __future__ import annotations

from pathlib import Path

import pytest

from sloserve.errors import InvalidArgumentError
from sloserve.settings import OPTIONS, Settings, default_home, load_settings


def test_flags_win_over_environment_which_wins_over_defaults() -> None:
    env = {"SLOSERVE_HTTP_PORT": "9000", "SLOSERVE_GRPC_PORT": "9001", "SLOSERVE_REPOSITORY": "/models"}
    settings = load_settings({"http_port": "7000", "grpc_port": None}, env)
    assert settings.http_port == 7000  # flag
    assert settings.grpc_port == 9001  # environment
    assert settings.metrics_port == Settings().metrics_port  # default
    assert settings.repository == Path("/models")


def test_every_setting_has_a_flag_and_an_environment_variable() -> None:
    assert set(OPTIONS) == set(Settings.__dataclass_fields__)
    assert all(o.env.startswith("SLOSERVE_") and o.flag.startswith("--") for o in OPTIONS.values())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"http_port": "eighty"}, "--http-port"),
        ({"grpc_port": "70000"}, "not a port"),
        ({"log_level": "chatty"}, "--log-level"),
    ],
)
def test_bad_values_name_the_flag(flags: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        load_settings(flags, {})


def test_home_follows_sloserve_home_then_xdg() -> None:
    assert default_home({"SLOSERVE_HOME": "/x/home"}) == Path("/x/home")
    assert default_home({"XDG_CACHE_HOME": "/cache"}) == Path("/cache/sloserve")
    assert default_home({}).name == "sloserve"
