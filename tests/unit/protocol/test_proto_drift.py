"""The committed gRPC stubs are exactly what scripts/gen_proto.py makes of inference.proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "src" / "sloserve" / "protocol" / "generated"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    generator = load_generator()

    written = generator.generate(tmp_path)

    assert sorted(p.name for p in written) == sorted(generator.GENERATED_FILES)
    stale = [
        p.name
        for p in written
        if not (COMMITTED / p.name).exists() or (COMMITTED / p.name).read_text() != p.read_text()
    ]
    assert not stale, f"stubs out of date with inference.proto: {stale}; run `python scripts/gen_proto.py`"
