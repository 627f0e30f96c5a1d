"""Helpers shared by the workflows tests: world-derived build configs and store hashes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from terracube.pipeline.corpus.store import SampleData
from terracube.pipeline.tile import TileInputs
from terracube.workflows.build.tasks import PipelineTileBuilder
from terracube.workflows.world import WorldManifest

from tests.workflows.world_fixture import shared_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> WorldManifest:
    return shared_world(tmp_path_factory)


def world_config(
    world: WorldManifest,
    folder: Path,
    *,
    store: str = "corpus.zarr",
    modalities: Sequence[str] | None = None,
    tiles: Sequence[str] | None = None,
    samples_per_shard: int = 1,
    storage_options: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A build.yaml in `folder` for the synthetic world, narrowed to keep tests fast."""
    document = yaml.safe_load(world.build_yaml.read_text())
    for name, source in list(document["modalities"].items()):
        if modalities is not None and name not in modalities:
            del document["modalities"][name]
            continue
        for key in ("catalog", "path"):
            if key in source:
                source[key] = str(world.root / source[key])
    if tiles is not None:
        document["aoi"] = {"tiles": list(tiles)}
    document["output"] = {"store": store, "samples_per_shard": samples_per_shard}
    if storage_options:
        document["output"]["storage_options"] = storage_options
    document.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "build.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def store_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of a local store, by relative path (temp files excluded)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".partial")
    }


def shard_files(root: Path) -> dict[str, float]:
    """mtime_ns of every chunk/shard file (under `<array>/c/`), to prove a shard was not rewritten."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file() and "/c/" in f"/{p.relative_to(root)}"
    }


@dataclass(frozen=True)
class SlowTiles:
    """The pipeline builder after a pause: keeps a task on its worker long enough to kill it.

    Same output as the pipeline builder; lives here (not in a test module) so that Dask
    workers started with PYTHONPATH=<repo> can unpickle it cheaply.
    """

    pause_s: float = 2.0

    def __call__(self, inputs: TileInputs, groups: Sequence[str]) -> SampleData:
        time.sleep(self.pause_s)
        return PipelineTileBuilder()(inputs, groups)
