"""Plan, submit, track and resume at corpus scale: seconds and peak memory per step.

For each N of `--tiles` and each scenario (`worldwide`: N tiles at random places between
56 S and 72 N; `contiguous`: one square AOI astride the 32/33 UTM zone boundary):

- **store step** (a fresh process): synthetic item tables
  (`workflows/world/item_tables.py`: Sentinel-2, Landsat and Sentinel-1 scene grids
  revisited 3, 2 and 3 times a month for 12 months; records from the synthetic world's
  normalised items), written to an item store (`catalog.plan_items.ItemStoreWriter`)
  in id order, as per-region search answers arrive. This is the search side's work,
  timed apart. Up to `--reference-up-to` tiles the per-tile reference planner also
  runs on the same tables: the floor the columnar planner is compared with.
- **plan step** (a fresh process, so its peak RSS is its own: VmHWM): the store's
  planning columns are read and planned with `catalog.plan.write_plan` into a saved
  plan. `plan_seconds` includes reading the store.

On the worldwide plan it then creates the store (metadata only) with the size-based
default samples per shard (`workflows.sizing`; `--samples-per-shard` overrides),
submits one no-op task per shard through the real build path (`shard_tasks` ->
`DaskExecutor` on a 2-worker LocalCluster: the payload is the real `ShardTask`; the
worker returns at once), times a cold worker's read of its plan rows and items, marks
the first half of the shards done (writing the state, valid-fraction and per-sample
metadata arrays whole-shard; the band arrays are left unwritten, so status reports
them as damage, which costs the same listing), and times `terracube status`
(`corpus_status`) and the resume planning (`readable_states` + `plan_shard_work`).

    .venv/bin/python benchmarks/plan_scale.py [--tiles 1000,10000,100000,300000]

Prints one line per step and the growth exponent of plan time between the smallest
N >= 10k and the largest; the last line is JSON with `plan_seconds`,
`plan_peak_rss_mb`, `status_seconds`, `submit_tasks_per_s` (largest N, worldwide)
and every figure per N.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import pickle
import resource
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

START = date(2023, 1, 1)
MONTHS = 12


def _rss_mb() -> float:
    """This process's own peak RSS: VmHWM starts afresh at exec, where ru_maxrss keeps
    the parent's peak across the fork and exec of a spawned step."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _templates(root: Path) -> dict[str, Any]:
    from terracube.workflows.world.generate import generate_world
    from terracube.workflows.world.item_tables import templates

    world = generate_world(root / "world", seed=0, size="test")
    return templates(world.ndjson)


def _tiles(scenario: str, n: int) -> list[Any]:
    from terracube.workflows.world.item_tables import contiguous_tiles, worldwide_tiles

    return worldwide_tiles(n, seed=0) if scenario == "worldwide" else contiguous_tiles(n)


def store_step(scenario: str, n: int, root: str, reference: bool, out: Any) -> None:
    """Runs in a fresh process: the search answers of one N, streamed to an item store
    on disk (what a search writes; `catalog.plan_items.ItemStoreWriter`), and the
    per-tile reference planner on the same tables when asked."""
    from terracube.catalog.plan import make_plan_reference
    from terracube.catalog.plan_items import ItemStoreWriter
    from terracube.catalog.timescheme import TimeScheme
    from terracube.workflows.world.item_tables import item_tables

    base = Path(root)
    record_templates = pickle.loads((base / "templates.pkl").read_bytes())
    tick = time.perf_counter()
    tiles = _tiles(scenario, n)
    tables = item_tables(tiles, START, MONTHS, record_templates, seed=0)
    tables_seconds = time.perf_counter() - tick
    directory = base / f"items-{scenario}-{n}"
    tick = time.perf_counter()
    writer = ItemStoreWriter(directory)
    for name, table in tables.items():
        # in id order (zone, scene, date): the order per-region answers come in, so a
        # scene's revisits share row groups, as a region's search answer does
        order = np.argsort(table.ids, kind="stable")
        for first in range(0, len(table), 65_536):
            writer.add(name, table, order[first : first + 65_536])
    writer.close()
    result: dict[str, Any] = {
        "items": {k: len(v) for k, v in tables.items()},
        "tables_seconds": round(tables_seconds, 2),
        "store_seconds": round(time.perf_counter() - tick, 2),
        "store_mb": round(sum(p.stat().st_size for p in directory.iterdir()) / 2**20, 1),
        "store_peak_rss_mb": round(_rss_mb(), 1),
    }
    if reference:
        items = {name: [t.item(r) for r in range(len(t))] for name, t in tables.items()}
        tick = time.perf_counter()
        make_plan_reference(tiles, TimeScheme(START, MONTHS), items)
        result["reference_seconds"] = round(time.perf_counter() - tick, 2)
    out.put(result)


def plan_step(scenario: str, n: int, root: str, out: Any) -> None:
    """Runs in a fresh process: read the item store's planning columns and plan them
    with `catalog.plan.write_plan` into a saved plan (peak RSS is this step's own)."""
    from terracube.catalog.plan import write_plan
    from terracube.catalog.plan_items import read_item_tables
    from terracube.catalog.timescheme import TimeScheme
    from terracube.workflows.world.item_tables import SCENE_GRIDS

    base = Path(root)
    tiles = _tiles(scenario, n)
    rss_tiles = _rss_mb()
    directory = base / f"plan-{scenario}-{n}"
    tick = time.perf_counter()
    tables = read_item_tables(base / f"items-{scenario}-{n}", [g.modality for g in SCENE_GRIDS])
    read_seconds = time.perf_counter() - tick
    write_plan(tiles, TimeScheme(START, MONTHS), tables, directory)
    plan_seconds = time.perf_counter() - tick
    meta = json.loads((directory / "plan.json").read_text())
    out.put(
        {
            "scenario": scenario,
            "tiles": len(tiles),
            "read_items_seconds": round(read_seconds, 2),
            "plan_seconds": round(plan_seconds, 2),
            "plan_ms_per_tile": round(1000 * plan_seconds / len(tiles), 3),
            "assignments": meta["assignments"],
            "plan_items": meta["items"],
            "plan_mb": round(
                sum(p.stat().st_size for p in directory.iterdir() if p.name != "items.parquet")
                / 2**20,
                1,
            ),
            "tiles_rss_mb": round(rss_tiles, 1),
            "plan_peak_rss_mb": round(_rss_mb(), 1),
        }
    )


def _in_process(target: Any, *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return dict(result)


def noop_task(task: Any) -> int:
    """What the submission benchmark runs on the worker: nothing (the scheduler's and the
    client's cost alone; reading the plan rows is timed apart, `plan_read_ms_per_shard`)."""
    return int(task.shard)


def track_step(n: int, root: Path, plan_dir: Path, samples_per_shard: int) -> dict[str, Any]:
    from terracube.catalog.plan_store import PlanFiles, PlanRef
    from terracube.pipeline.corpus.integrity import readable_states
    from terracube.pipeline.corpus.store import SampleState, create_corpus
    from terracube.workflows.build.shards import plan_shard_work
    from terracube.workflows.build.status import corpus_status
    from terracube.workflows.build.tasks import PipelineTileBuilder
    from terracube.workflows.cluster import DaskExecutor

    store = root / f"store-{n}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    groups = ("s2_10m", "s2_20m", "s2_40m", "landsat", "s1")
    tick = time.perf_counter()
    corpus = create_corpus(store, n, MONTHS, samples_per_shard, groups=groups)
    create_seconds = time.perf_counter() - tick
    files = PlanFiles(plan_dir)
    ref = PlanRef.of(files)
    states = {m: np.zeros(n, dtype=np.uint8) for m in corpus.params.modalities}
    works = plan_shard_work(states, samples_per_shard)
    tile_ids = [str(t) for t in files.samples.tile_id]

    from distributed import Client, LocalCluster
    from terracube.workflows.build.runner import shard_tasks
    from terracube.workflows.config import load_config

    config = load_config(_bench_config(root, store, samples_per_shard))
    tasks = list(shard_tasks(works, ref, tile_ids, config, PipelineTileBuilder(), None))
    payload = len(pickle.dumps(tasks[0]))
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: None)
        executor = DaskExecutor(client, max_in_flight=1024, function=noop_task)
        done = []
        tick = time.perf_counter()
        executor.run(iter(tasks), lambda task, outcome: done.append(outcome))
        submit_seconds = time.perf_counter() - tick
    failed = [o for o in done if isinstance(o, BaseException)]
    if failed:
        raise SystemExit(f"no-op tasks failed: {failed[0]!r}")
    from terracube.workflows.build.shards import PlanIndex

    picks = np.linspace(0, len(works) - 1, min(40, len(works))).astype(int)
    tick = time.perf_counter()
    for k in picks:
        fresh = PlanFiles(plan_dir)  # a cold worker: no cached row groups
        PlanIndex.from_files(fresh, works[k].start, works[k].stop)
    plan_read_ms = 1000 * (time.perf_counter() - tick) / len(picks)
    half = (len(corpus.shards) // 2) * samples_per_shard
    tick = time.perf_counter()
    for name in corpus.params.modalities:
        corpus.array(f"{name}_state")[:half] = int(SampleState.DONE)
    for group in corpus.params.groups:
        arr = corpus.array(f"{group}_valid_fraction")
        arr[:half] = np.ones((half, *arr.shape[1:]), dtype=arr.dtype)
    mark_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    status = corpus_status(str(store))
    status_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    stored = readable_states(corpus, "the benchmark")
    resume = plan_shard_work(stored, samples_per_shard)
    resume_seconds = time.perf_counter() - tick
    return {
        "samples": n,
        "samples_per_shard": samples_per_shard,
        "shards": len(corpus.shards),
        "create_seconds": round(create_seconds, 2),
        "task_payload_bytes": payload,
        "submit_seconds": round(submit_seconds, 2),
        "submit_tasks_per_s": round(len(tasks) / submit_seconds, 1),
        "plan_read_ms_per_shard": round(plan_read_ms, 1),
        "mark_half_seconds": round(mark_seconds, 2),
        "status_seconds": round(status_seconds, 2),
        "status_done": {k: v["done"] for k, v in status["states"].items()},
        "resume_seconds": round(resume_seconds, 2),
        "resume_shards": len(resume),
    }


def _bench_config(root: Path, store: Path, samples_per_shard: int) -> Path:
    path = root / "bench.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "plan-scale",
                "aoi": {"bbox": [5.9, 46.9, 6.0, 47.0]},
                "time": {"start": START.isoformat(), "periods": MONTHS},
                "modalities": {
                    m: {"source": "stac_api", "profile": "earth-search"}
                    for m in ("sentinel2_l2a", "sentinel1", "landsat_c2l2")
                },
                "output": {"store": str(store), "samples_per_shard": samples_per_shard},
            }
        )
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", default="1000,10000", help="comma-separated N")
    ap.add_argument("--scenarios", default="worldwide,contiguous")
    ap.add_argument("--reference-up-to", type=int, default=1000)
    ap.add_argument(
        "--samples-per-shard", type=int, default=0, help="0: the default for each N (sizing)"
    )
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = ap.parse_args()
    try:
        sizes = [int(v) for v in args.tiles.split(",")]
    except ValueError:
        ap.error(f"--tiles {args.tiles!r}: give comma-separated tile counts, e.g. 1000,10000")
    if any(n < 1 for n in sizes):
        ap.error(f"--tiles {args.tiles!r}: every count must be at least 1")
    root = args.keep or Path(tempfile.mkdtemp(prefix="plan-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "templates.pkl").write_bytes(pickle.dumps(_templates(root)))
    plans: list[dict[str, Any]] = []
    tracks: list[dict[str, Any]] = []
    for n in sizes:
        for scenario in args.scenarios.split(","):
            stored = _in_process(store_step, scenario, n, str(root), n <= args.reference_up_to)
            row = {**_in_process(plan_step, scenario, n, str(root)), **stored}
            if "reference_seconds" in row:
                row["speedup_vs_reference"] = round(
                    row["reference_seconds"] / row["plan_seconds"], 1
                )
            plans.append(row)
            print(json.dumps({"step": "plan", **row}), flush=True)
        from terracube.workflows.sizing import default_samples_per_shard

        per_shard = args.samples_per_shard or default_samples_per_shard(n)
        track = track_step(n, root, root / f"plan-worldwide-{n}", per_shard)
        tracks.append(track)
        print(json.dumps({"step": "track", **track}), flush=True)
        for p in [*root.glob(f"plan-*-{n}"), *root.glob(f"items-*-{n}")]:
            shutil.rmtree(p)
        shutil.rmtree(root / f"store-{n}.zarr", ignore_errors=True)
    worldwide = [p for p in plans if p["scenario"] == "worldwide"]
    growth = None
    big = [p for p in worldwide if p["tiles"] >= 10_000]
    if len(big) >= 2:
        a, b = big[0], big[-1]
        growth = math.log(b["plan_seconds"] / a["plan_seconds"]) / math.log(b["tiles"] / a["tiles"])
        print(f"plan time growth exponent {a['tiles']} -> {b['tiles']} tiles: {growth:.2f}")
    last, track = worldwide[-1], tracks[-1]
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {
                "tiles": last["tiles"],
                "plan_seconds": last["plan_seconds"],
                "plan_peak_rss_mb": last["plan_peak_rss_mb"],
                "status_seconds": track["status_seconds"],
                "resume_seconds": track["resume_seconds"],
                "submit_tasks_per_s": track["submit_tasks_per_s"],
                "task_payload_bytes": track["task_payload_bytes"],
                "growth_exponent": None if growth is None else round(growth, 3),
                "plans": plans,
                "tracks": tracks,
                "peak_rss_mb": round(_rss_mb(), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
