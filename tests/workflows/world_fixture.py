"""The test-size synthetic world, generated at most once per test session.

Use the `world` / `world_truth` fixtures from tests/conftest.py. `shared_world` is the
cache behind them; modules that still declare their own session `world` fixture
calling it get the very same manifest, so the world is still generated only once.
"""

from __future__ import annotations

import pytest
from terracube.workflows.world import WorldManifest, generate_world

_GENERATED: dict[str, WorldManifest] = {}


def shared_world(tmp_path_factory: pytest.TempPathFactory) -> WorldManifest:
    """Generate the seed-0 test world once; later callers get the same manifest."""
    if "test" not in _GENERATED:
        out = tmp_path_factory.mktemp("world") / "world"
        _GENERATED["test"] = generate_world(out, seed=0, size="test")
    return _GENERATED["test"]
