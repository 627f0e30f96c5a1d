"""`terracube embed` throughput against the loader's on the same corpus, and its memory.

Method (one run, so the machine's noise hits every figure alike):

- corpora: synthetic corpora of every registry band group (smooth fields plus sensor-like
  noise, `benchmarks/loader.synthetic_sample`), 12 monthly periods, 4 samples per shard:
  the demo's size (20 tiles) and `--tiles` (default 200, 10x the demo). Built once into
  /tmp and reused.
- checkpoint: a seeded random-init nano model recorded as pretraining records it, trained
  (as the demo is) at patch 8 on 32 px crops; the export takes those as its patch size and
  window. Weights do not change the cost.
- embed: the real export (`workflows.embed.run_embed`, in-process path) in a fresh spawned
  process per corpus, timed end to end (model load, reads, encoder, store and table
  writes, consolidation); peak RSS of that process.
- loader floor: the same whole-tile reads of the same groups and periods through the
  same `CorpusStream` path the export uses, materialised into the model's float32 `Batch`
  (what the encoder is fed), no encoder, in a fresh spawned process.
- ratio: export tiles/s over loader tiles/s, i.e. the share of the export's time the
  reads alone take. Well below 1 means the encoder, not the reads, is the limit.

The last line is JSON: tiles, embed_tiles_per_s, patch_embeddings_per_s,
loader_tiles_per_s, embed_to_loader_ratio, peak_rss_mb (largest corpus), peak_rss_mb_small,
rss_growth (largest / small: bounded memory means ~1).

    .venv/bin/python benchmarks/embed.py [--tiles 200] [--small 20] [--periods 12]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terracube.model.embed.run import Embedder
from terracube.model.embed.spec import EmbedSpec
from terracube.model.eval.evaluate import init_model
from terracube.model.train.checkpoint import save_checkpoint
from terracube.model.train.pretrain import CHECKPOINT_FORMAT
from terracube.pipeline.corpus.store import create_corpus
from terracube.workflows.embed import run_embed

from benchmarks.loader import synthetic_sample

PER_SHARD = 4
PATCH, CROP = 8, 32
MB = 2**20


def ensure_corpus(tiles: int, periods: int) -> Path:
    root = Path(tempfile.gettempdir()) / f"terracube-embed-bench-{tiles}x{periods}"
    if (root / "complete").exists():
        return root / "corpus.zarr"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    corpus = create_corpus(root / "corpus.zarr", tiles, periods, PER_SHARD)
    rng = np.random.default_rng(0)
    for k, span in enumerate(corpus.shards):
        corpus.write_shard(k, [synthetic_sample(i, periods, rng) for i in span])
    (root / "complete").touch()
    return root / "corpus.zarr"


def ensure_checkpoint() -> Path:
    folder = Path(tempfile.gettempdir()) / "terracube-embed-bench-ckpt"
    settings = {
        "seed": 0,
        "model": {"size": "nano"},
        "loader": {"patch_sizes": [PATCH], "crop_sizes": [CROP]},
        "store": "benchmark",
    }
    state = {"format": CHECKPOINT_FORMAT, "step": 0, "model": init_model("nano", 0).state_dict()}
    return save_checkpoint(folder, 0, {**state, "settings": settings})


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def _embed_child(spec: EmbedSpec, queue: Any) -> None:
    began = time.perf_counter()
    report = run_embed(spec, progress=False)
    queue.put(
        {
            "seconds": time.perf_counter() - began,
            "tiles": report.samples_done,
            "peak_rss_mb": _peak_mb(),
        }
    )


def _loader_child(spec: EmbedSpec, queue: Any) -> None:
    job = Embedder(spec, create=True)  # a fresh one: the floor writes nothing
    samples = [i for i in range(job.corpus.n_samples) if job.has_input[i]]
    began = time.perf_counter()
    pixels = 0
    for item in job.stream.iter_plans(job._plans(samples)):
        batch = item.to("cpu")
        pixels += sum(int(x.numel()) for x in batch.data.values())
    queue.put({"seconds": time.perf_counter() - began, "tiles": len(samples), "values": pixels})


def in_child(target: Any, spec: EmbedSpec) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=target, args=(spec, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: the child may have died
            if not proc.is_alive():
                raise SystemExit(f"benchmark child died (exit code {proc.exitcode})") from None
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"benchmark child failed with exit code {proc.exitcode}")
    return dict(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=200, help="the large corpus (10x the demo)")
    parser.add_argument("--small", type=int, default=20, help="the demo-sized corpus")
    parser.add_argument("--periods", type=int, default=12)
    args = parser.parse_args()
    if args.tiles < args.small or args.small < PER_SHARD:
        parser.error(f"need --tiles >= --small >= {PER_SHARD}")
    checkpoint = ensure_checkpoint()
    work = Path(tempfile.mkdtemp(prefix="terracube-embed-bench-out-"))
    figures: dict[str, dict[str, Any]] = {}
    try:
        for label, tiles in (("small", args.small), ("large", args.tiles)):
            corpus = ensure_corpus(tiles, args.periods)
            spec = EmbedSpec(str(checkpoint), str(corpus), str(work / label), device="cpu")
            figures[label] = in_child(_embed_child, spec)
            print(
                f"embed {tiles} tiles x {args.periods} periods: {figures[label]['seconds']:.1f} s "
                f"({tiles / figures[label]['seconds']:.3f} tiles/s), peak RSS "
                f"{figures[label]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        loader_spec = EmbedSpec(
            str(checkpoint),
            str(ensure_corpus(args.tiles, args.periods)),
            str(work / "floor"),
            device="cpu",
        )
        floor = in_child(_loader_child, loader_spec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    large = figures["large"]
    embed_rate = large["tiles"] / large["seconds"]
    loader_rate = floor["tiles"] / floor["seconds"]
    patches = (256 // PATCH) ** 2
    print(f"loader floor (same reads into float32 batches, no encoder): {loader_rate:.2f} tiles/s")
    print(
        f"embed / loader throughput: {embed_rate / loader_rate:.3f} (the same reads alone take "
        f"{embed_rate / loader_rate:.0%} of the export's time; the rest is the encoder, "
        "writes and model load)"
    )
    print(
        f"peak RSS {figures['small']['peak_rss_mb']:.0f} MB at {args.small} tiles, "
        f"{large['peak_rss_mb']:.0f} MB at {args.tiles} tiles "
        f"({large['peak_rss_mb'] / figures['small']['peak_rss_mb']:.2f}x)"
    )
    print(
        json.dumps(
            {
                "tiles": args.tiles,
                "periods": args.periods,
                "patch_size": PATCH,
                "window": CROP,
                "embed_tiles_per_s": round(embed_rate, 4),
                "patch_embeddings_per_s": round(embed_rate * patches, 1),
                "loader_tiles_per_s": round(loader_rate, 3),
                "embed_to_loader_ratio": round(embed_rate / loader_rate, 4),
                "peak_rss_mb": round(large["peak_rss_mb"], 1),
                "peak_rss_mb_small": round(figures["small"]["peak_rss_mb"], 1),
                "rss_growth": round(large["peak_rss_mb"] / figures["small"]["peak_rss_mb"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
