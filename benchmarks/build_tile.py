"""Seconds per tile of the build against the raw-read floor measured in the same run.

A 12-period S2 + S1 + Landsat + WorldCover + OSM tile of the synthetic world
(demo size) is built from local COGs and over HTTP range requests (the test
asset server). The floor reads exactly the source windows the build touches
with plain rasterio windowed reads (no warp, no mask, no composite). The build
reads the same windows itself wherever an asset lies on the tile's grid lattice
(pipeline/read/direct.py: one GDAL env per batch, nearest as a numpy gather) and
warps through stackstac only the rest (here the neighbouring zone's WorldCover
tile, mode-resampled). Last line:
one JSON object {"seconds_per_tile", "floor_seconds", "ratio", "peak_rss_mb", "http_ratio"}.

Floor and build alternate (floor, build, floor, build, ...) and the medians are
compared, so load from other processes on the machine hits both alike. One
untimed build first warms imports and the OS page cache for both.

    .venv/bin/python benchmarks/build_tile.py [--world DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.services from a checkout

from terracube.catalog.grid import Tile
from terracube.catalog.osm.features import OsmFeatures
from terracube.catalog.registry import BAND_GROUPS, band_group
from terracube.catalog.stac.items import NormalizedItem, normalize_item
from terracube.pipeline.read.reader import (
    group_request,
    read_source_windows,
    source_windows,
)
from terracube.pipeline.tile import (
    BuildParams,
    TileInputs,
    build_tile,
    modality_requests,
    select_items,
)
from terracube.workflows.world import generate_world, load_truth

TEMPORAL = ("sentinel2_l2a", "landsat_c2l2", "sentinel1")


def load_items(world: Path, rewrite: str | None = None) -> dict[str, NormalizedItem]:
    items = {}
    for path in sorted((world / "ndjson").glob("*.ndjson")):
        if path.stem == "collections":
            continue
        for line in path.read_text().splitlines():
            data = json.loads(line)
            if rewrite:
                for asset in data["assets"].values():
                    rel = Path(asset["href"]).resolve().relative_to(world.resolve())
                    asset["href"] = f"{rewrite}/{rel.as_posix()}"
            item = normalize_item(data)
            items[item.id] = item
    return items


def tile_inputs(truth, items, osm: OsmFeatures, tile_id: str) -> TileInputs:
    tile = Tile.from_id(tile_id)
    periods = range(len(truth.period_starts))
    return TileInputs(
        tile=tile,
        period_starts=tuple(truth.period_starts),
        temporal={
            m: [[items[i] for i in truth.items(tile_id, m, p)] for p in periods] for m in TEMPORAL
        },
        static={"worldcover": [items[i] for i in truth.items(tile_id, "worldcover", 0)]},
        osm=osm.features_for_tile(tile),
    )


def floor_windows(inputs: TileInputs, params: BuildParams):
    """Exactly the source windows the build reads (same item selection, same requests)."""
    windows = []
    for name, per_period in inputs.temporal.items():
        chosen = [
            i for c in per_period for i in select_items(c, inputs.tile, params.own_zone_first)
        ]
        groups = [g for g in BAND_GROUPS.values() if g.modality == name]
        for request in modality_requests(chosen, groups, inputs.tile)[0]:
            windows += source_windows(request)
    wc = band_group("worldcover")
    for item in select_items(inputs.static["worldcover"], inputs.tile, False):
        request = group_request([item], wc, inputs.tile, with_mask=False)
        windows += source_windows(request)
    return windows


def interleaved(
    floor: Callable[[], object], build: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Median seconds of floor and build, run alternately `repeat` times each."""
    floors, builds = [], []
    for _ in range(repeat):
        for fn, out in ((floor, floors), (build, builds)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    print(f"  floor runs {', '.join(f'{t:.2f}' for t in floors)} s; "
          f"build runs {', '.join(f'{t:.2f}' for t in builds)} s", flush=True)  # fmt: skip
    return statistics.median(floors), statistics.median(builds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, help="a generated demo world (made if absent)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (median)")
    args = parser.parse_args()
    world = args.world or Path(tempfile.gettempdir()) / "terracube-bench-world-demo"
    if not (world / "truth" / "truth.json").exists():
        print(f"generating the demo world in {world} ...", flush=True)
        generate_world(world, seed=0, size="demo")
    truth = load_truth(world)
    osm = OsmFeatures.from_extract(world / "osm" / "world.osm")
    tile_id = truth.tile_ids[len(truth.tile_ids) // 2]
    params = BuildParams()
    groups = list(BAND_GROUPS)

    local = tile_inputs(truth, load_items(world), osm, tile_id)
    windows = floor_windows(local, params)
    result = build_tile(local, groups, params)  # warm-up, and the per-modality split
    print(f"tile {tile_id}: {len(truth.period_starts)} periods, {len(windows)} source windows, "
          f"{args.repeat} interleaved runs each")  # fmt: skip
    print("per modality (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()))
    floor, build = interleaved(
        lambda: read_source_windows(windows), lambda: build_tile(local, groups, params), args.repeat
    )
    print(f"local: build {build:.2f} s, raw-read floor {floor:.2f} s, ratio {build / floor:.2f}")

    from tests.services.http_assets import run_asset_server

    with run_asset_server(world) as server:
        remote = tile_inputs(truth, load_items(world, rewrite=server.url), osm, tile_id)
        remote_windows = floor_windows(remote, params)
        http_floor, http_build = interleaved(
            lambda: read_source_windows(remote_windows),
            lambda: build_tile(remote, groups, params),
            args.repeat,
        )
    print(f"http: build {http_build:.2f} s, raw-read floor {http_floor:.2f} s, "
          f"ratio {http_build / http_floor:.2f}")  # fmt: skip
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MiB")
    print(
        json.dumps(
            {
                "seconds_per_tile": round(build, 3),
                "floor_seconds": round(floor, 3),
                "ratio": round(build / floor, 3),
                "peak_rss_mb": round(peak_mb, 1),
                "http_ratio": round(http_build / http_floor, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
