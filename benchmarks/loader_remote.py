"""Loader throughput from a store with object-store latency, against the same loader with none.

Method (one process, one run):

- corpus: `benchmarks/loader.py`'s synthetic corpus (built there on first use).
- store: zarr's `LatencyStore` around the corpus's `LocalStore`, adding a fixed delay to
  every read (default 20 ms, a typical same-region S3 first-byte latency). Reads then go
  through zarr's store API exactly as from S3 (suffix read of each shard index, range
  reads of the needed chunks), so the figures isolate how the loader waits on requests.
- floor: the same loader through the same store API with no delay (decode, assembly
  and the store API's own CPU work: thread hops, buffer copies).
- variants: the default `prefetch_shards` (every array of a shard in one concurrent
  wave, the next shards in flight while one decodes) and `prefetch_shards=0` (each
  array of a shard read in turn, when needed: what the loader did before).
- peer: zarr's own selection (`arr[sample, window]`) of the same windows, one sample
  and group after another, through the same store (a hand-rolled per-sample loader).
- one loader, in the process (no DataLoader workers), over one epoch (the two slow
  variants over its first `--slow-batches` batches); figures are the best of
  `--rounds` runs. Context: the local fast path (positioned reads, no store API).

The last line is JSON: samples_per_s_prefetch, samples_per_s_sequential,
samples_per_s_no_latency, latency_ratio (prefetch / no latency), prefetch_speedup
(prefetch / sequential), zarr_speedup (prefetch / zarr selection), peak_rss_mb.

    .venv/bin/python benchmarks/loader_remote.py [--latency-ms 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from terracube.model.data.loader import CorpusStream
from terracube.model.data.plan import LoaderParams, sample_window
from terracube.model.data.remote import PREFETCH_SHARDS
from terracube.pipeline.corpus import store as corpus_module
from zarr.abc.store import Store
from zarr.storage import LocalStore
from zarr.testing.store import LatencyStore

sys.path.insert(0, str(Path(__file__).parent))
from loader import BenchConfig, ensure_corpus

PARAMS = LoaderParams(
    batch_size=4, crop_sizes=(32, 64, 128), patch_sizes=(4, 8), token_budget=4096, shuffle_buffer=16
)


_OPEN_STORE = corpus_module.open_store


def with_latency(latency_s: float | None) -> None:
    """Make every corpus opened from now on read through a LatencyStore (None: the plain
    LocalStore, which the loader reads with positioned reads instead of the store API)."""
    original = _OPEN_STORE

    def open_store(
        url: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        read_only: bool = False,
    ) -> Store:
        store = original(url, storage_options, read_only)
        if isinstance(store, LocalStore) and latency_s is not None:
            return LatencyStore(store, get_latency=latency_s)
        return store

    corpus_module.open_store = open_store


def loader_epoch(path: Path, prefetch: int, batches: int | None = None) -> tuple[float, int]:
    stream = CorpusStream(path, PARAMS, prefetch_shards=prefetch)
    plans = stream.plans(0, 0, 1)[:batches]
    t0 = time.perf_counter()
    samples = sum(item.batch_size for item in stream.iter_plans(plans))
    return time.perf_counter() - t0, samples


def zarr_epoch(path: Path, latency_s: float, batches: int) -> tuple[float, int]:
    """zarr selections of the same windows, sample by sample and group by group."""
    stream = CorpusStream(path, PARAMS)
    plans = stream.plans(0, 0, 1)[:batches]
    store = LatencyStore(LocalStore(path), get_latency=latency_s)
    group = zarr.open_group(store, mode="r")
    arrays = {g: group[g] for g in stream.groups}
    t0 = time.perf_counter()
    n = 0
    for plan in plans:
        for b, sample in enumerate(plan.samples):
            for g, arr in arrays.items():
                window = sample_window(g, plan, b)
                np.asarray(arr[(sample, *(slice(a, z) for a, z in window))])
            n += 1
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--slow-batches", type=int, default=4, help="batches timed for the two slow variants"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = ensure_corpus(BenchConfig()) / "corpus.zarr"
    latency = args.latency_ms / 1e3

    def best(run: Callable[[], tuple[float, int]]) -> float:
        rates = []
        for _ in range(args.rounds):
            seconds, samples = run()
            rates.append(samples / seconds)
        return max(rates)

    with_latency(None)
    local = best(lambda: loader_epoch(path, PREFETCH_SHARDS))
    with_latency(0.0)
    no_latency = best(lambda: loader_epoch(path, PREFETCH_SHARDS))
    with_latency(latency)
    prefetch = best(lambda: loader_epoch(path, PREFETCH_SHARDS))
    sequential = best(lambda: loader_epoch(path, 0, args.slow_batches))
    peer = best(lambda: zarr_epoch(path, latency, args.slow_batches))
    ms = f"{args.latency_ms:.0f} ms per read"
    print(f"corpus {path}, one loader in the process, best of {args.rounds} epochs")
    print(f"  local file, positioned reads (context):    {local:7.1f} samples/s")
    print(f"  store API, no latency (floor):              {no_latency:7.1f} samples/s")
    print(f"  {ms}, prefetch {PREFETCH_SHARDS} shards (default):   {prefetch:7.1f} samples/s")
    print(f"  {ms}, prefetch 0, arrays in turn:    {sequential:7.1f} samples/s")
    print(f"  {ms}, zarr selection per sample:     {peer:7.1f} samples/s")
    print(
        f"  prefetch / floor {prefetch / no_latency:.2f}, prefetch / in turn "
        f"{prefetch / sequential:.1f}x, prefetch / zarr selection {prefetch / peer:.0f}x"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    print(f"peak RSS {rss:.0f} MB")
    print(
        json.dumps(
            {
                "samples_per_s_prefetch": round(prefetch, 2),
                "samples_per_s_sequential": round(sequential, 2),
                "samples_per_s_no_latency": round(no_latency, 2),
                "latency_ratio": round(prefetch / no_latency, 3),
                "prefetch_speedup": round(prefetch / sequential, 3),
                "zarr_speedup": round(prefetch / peer, 3),
                "peak_rss_mb": round(rss, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
