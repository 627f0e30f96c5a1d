"""How the build scales from 1 to 2 Dask workers on the same plan, and what a task costs.

The synthetic world's tiles are planned once, repeated `--copies` times (so there are
enough shard tasks to keep two workers busy), and built into a fresh store twice: on a
LocalCluster with 1 worker, then with 2 (one thread each). Throughput is measured over
the task phase only (the cluster is already up). The floor of each figure is measured
in the same run:

- speedup = tiles/min with 2 workers / tiles/min with 1 worker (target >= 1.7 on 2 cores);
- overhead_fraction = share of worker time not spent in the tile builder, from the
  2-worker run: 1 - sum(builder seconds) / (task-phase wall x workers). It holds the
  scheduler round trips, task (de)serialisation, the shard read-back and write.

Usage: python benchmarks/build_scaling.py [--world DIR] [--copies 3] [--modalities ...]
The last line printed is one JSON object: tiles_per_min_1, tiles_per_min_2, speedup,
overhead_fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import yaml
from terracube.catalog.plan import Plan
from terracube.catalog.stac.search import search_and_plan
from terracube.workflows.build.runner import BuildOptions, BuildReport, run_build
from terracube.workflows.build.tasks import PipelineTileBuilder
from terracube.workflows.config import load_config
from terracube.workflows.planning import (
    make_source,
    select_tiles,
    stac_modalities,
    time_scheme,
)
from terracube.workflows.world import generate_world

DEFAULT_MODALITIES = ("sentinel2_l2a", "sentinel1", "landsat_c2l2", "worldcover")


def write_config(world: Path, out: Path, modalities: tuple[str, ...], store: str) -> Path:
    document = yaml.safe_load((world / "build.yaml").read_text())
    for name, source in list(document["modalities"].items()):
        if name not in modalities:
            del document["modalities"][name]
        else:
            for key in ("catalog", "path"):
                if key in source:
                    source[key] = str(world / source[key])
    document["output"] = {"store": store, "samples_per_shard": 1}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "build.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def repeated_plan(config_path: Path, copies: int) -> Plan:
    """The world's plan with every tile repeated `copies` times (one sample per copy)."""
    config = load_config(config_path)
    sources = {name: make_source(config, name) for name in stac_modalities(config)}
    return search_and_plan(sources, select_tiles(config) * copies, time_scheme(config))


def build_once(config_path: Path, plan: Plan, workers: int, read_scheduler: str) -> BuildReport:
    config = load_config(config_path)
    builder = PipelineTileBuilder(read_scheduler=read_scheduler)
    return run_build(config, plan, BuildOptions(workers=workers, show_progress=False), builder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, help="existing synthetic world (default: generate)")
    parser.add_argument("--copies", type=int, default=3, help="repeat the world's tiles N times")
    parser.add_argument("--modalities", nargs="+", default=list(DEFAULT_MODALITIES))
    parser.add_argument(
        "--read-scheduler",
        default="sync",
        choices=["sync", "threads"],
        help="stackstac's scheduler inside a task (sync: one core per worker)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="terracube-scaling-") as tmp:
        root = Path(tmp)
        world = args.world or generate_world(root / "world", seed=0, size="test").root
        modalities = tuple(args.modalities)
        plan = repeated_plan(
            write_config(world, root / "plan", modalities, "unused.zarr"), args.copies
        )
        n = len(plan.samples)
        print(f"{n} tiles ({args.copies} x the world's), modalities {', '.join(modalities)}")
        cores = len(os.sched_getaffinity(0))
        load = os.getloadavg()[0]
        print(f"{cores} cores, 1-min load average {load:.1f} before the runs")
        if load > 0.5 * cores:
            print("warning: the machine is busy; the speedup measures contention, not the build")
        reports = {}
        for workers in (1, 2):
            path = write_config(world, root / f"w{workers}", modalities, "corpus.zarr")
            report = build_once(path, plan, workers, args.read_scheduler)
            if sum(report.tiles.values()) != n or report.shard_errors:
                raise SystemExit(f"{workers}-worker build did not build all {n} tiles: {report}")
            reports[workers] = report
            per_tile = statistics.median(report.shard_build_seconds)
            print(
                f"{workers} worker(s): {report.tiles_per_minute:8.1f} tiles/min "
                f"(task phase {report.run_seconds:.1f} s; median builder time per shard "
                f"{per_tile:.2f} s)"
            )
        two = reports[2]
        busy = sum(two.shard_build_seconds)
        overhead = 1.0 - busy / (two.run_seconds * 2)
        task_overhead = (two.run_seconds * 2 - busy) / len(two.shard_build_seconds)
        speedup = two.tiles_per_minute / reports[1].tiles_per_minute
        print(
            f"speedup 2 vs 1 worker: {speedup:.2f} (target >= 1.7 on 2 free cores); "
            f"overhead per task {task_overhead:.2f} s = {overhead:.1%} of worker time"
        )
        print(
            json.dumps(
                {
                    "tiles_per_min_1": round(reports[1].tiles_per_minute, 2),
                    "tiles_per_min_2": round(two.tiles_per_minute, 2),
                    "speedup": round(speedup, 3),
                    "overhead_fraction": round(overhead, 4),
                }
            )
        )


if __name__ == "__main__":
    main()
