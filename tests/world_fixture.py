"""The test-size synthetic world, generated at most once per test session.

A module that needs it declares its own session fixture calling `shared_world`
(until the lead moves `world` into conftest.py)::

    @pytest.fixture(scope="session")
    def world(tmp_path_factory): return shared_world(tmp_path_factory)
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
