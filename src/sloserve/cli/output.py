"""Where the command line writes, and the paths every command resolves the same way."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from sloserve.settings import Settings, default_home, load_settings

console = Console(log_path=False)
"""Standard output; its ``log`` lines carry the time, not the file and line that printed them."""
err = Console(stderr=True, soft_wrap=True)
"""Errors and warnings, a message per line however long (a path in it stays whole for copying and grep)."""


def print_error(message: str, label: str = "[red]error:[/]") -> None:
    """``label`` and ``message`` on stderr, the message printed as it is (brackets in it are not markup)."""
    err.print(f"{label} {escape(message)}")


def settings_of(args: argparse.Namespace) -> Settings:
    """Settings from the command's flags (those it has) over the environment over defaults."""
    from sloserve.settings import OPTIONS

    return load_settings({name: getattr(args, name, None) for name in OPTIONS}, os.environ)


def home_of(args: argparse.Namespace) -> Path:
    home = getattr(args, "home", None)
    return Path(home).expanduser() if home else default_home(os.environ)


def repository_of(args: argparse.Namespace) -> Path:
    """--repository, else $SLOSERVE_REPOSITORY, else the demo repository in the home."""
    from sloserve.control.demo import demo_repository_root

    return settings_of(args).repository or demo_repository_root(home_of(args))
