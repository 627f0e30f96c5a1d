"""Loader throughput against the decode floor of the same chunks and a per-sample HDF5 peer.

Method (all in one run, so the shared machine's noise hits every figure alike):

- corpus: a synthetic corpus (every registry band group, smooth fields plus
  sensor-like noise so zstd has real work) and the same samples as one HDF5
  file per sample (OlmoEarth style: one dataset per group, chunked per
  timestep, zstd-3 via hdf5plugin). Generated once into /tmp and reused.
- loaders: `StreamingLoader` with 1 and 2 persistent DataLoader workers, warmed
  up (worker start-up, first epoch's first batches) before any clock runs. The
  timed loop drops each batch before taking the next, as a training loop does, so
  workers reuse the shared-memory slots of consumed batches.
- rounds: each round times, back to back, N batches of the 1-worker loader,
  N of the 2-worker loader, the decode floor and the HDF5 peer for the 1-worker
  loader's batches. Before a loader is timed its already-prefetched batches are
  drained untimed; after it, the clock waits until its workers stop using CPU
  (prefetch refilled), so no measurement shares the cores with a refill. Figures are medians over rounds; ratios are medians of
  per-round ratios.
- decode floor: zstd decode (numcodecs, one thread, into a reused buffer) of
  exactly the inner chunks the loader decodes for the same samples — the
  chunks of each sample's timestep window and crop (`sample_window` ->
  `window_chunks`) — from shard bytes already in memory; no I/O, no copies.
- what the loader delivers: workers send storage values at native resolution plus
  validity and masks (`RawBatch`); normalising them into the model's 10 m float32
  `Batch` happens where the batch is used (`item.to(device)`: GPU kernels in a GPU
  run). That consumer-side step is timed separately on this CPU and printed, so a
  CPU-only run can see what it adds to its training process.
- HDF5 peer: h5py reads the same window of every group of each sample
  (hyperslab selection: HDF5 decodes only those chunks), no normalisation.
- ESTIMATE: samples/s one H100 would consume training the base model.

- zarr peers: zarr-python selections of the same windows (`arr[sample, window]`), in this
  process, with zarr's own codec pipeline and with zarrs (the Rust codec pipeline for
  zarr-python), so every zarr release is judged against the compiled path on numbers.

The last line is JSON: samples_per_s_1, samples_per_s_2, decode_floor_ratio
(1-worker loader / floor), h5_speedup (1-worker loader / HDF5 peer), zarr_speedup and
zarrs_speedup (1-worker loader / each zarr pipeline), peak_rss_mb.

    .venv/bin/python benchmarks/loader.py [--samples 96] [--periods 6] [--rounds 9] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin
import numcodecs
import numpy as np
import torch
import zarr
from terracube.catalog.registry import BAND_GROUPS, MODALITIES, WORLDCOVER_CLASSES
from terracube.model.data.loader import CorpusStream, LoaderItem
from terracube.model.data.plan import BatchPlan, LoaderParams, sample_window
from terracube.model.data.stream import StreamingLoader
from terracube.model.nn.encoder import count_parameters
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.pipeline.corpus.shard_format import parse_index
from terracube.pipeline.corpus.shard_geometry import ShardLayout, window_chunks
from terracube.pipeline.corpus.store import (
    Corpus,
    InnerChunking,
    SampleData,
    SampleState,
    create_corpus,
)

H100_BF16_PEAK_FLOPS = 989e12
"""H100 SXM dense bf16 peak (NVIDIA datasheet)."""
ASSUMED_MFU = 0.40
MB = 1e6
FORMAT = "v4"
"""Bump when the synthetic corpus changes, so a stale /tmp copy is not reused (v4: corpus
format 2, zstd frame checksums and complete shards)."""


@dataclass(frozen=True)
class BenchConfig:
    samples: int = 96
    periods: int = 6
    per_shard: int = 4
    batch_size: int = LoaderParams.batch_size
    """The loader's and `terracube pretrain`'s default (8)."""
    shuffle_buffer: int = LoaderParams.shuffle_buffer
    token_budget: int = 4096
    rounds: int = 9
    batches: int = 24
    """Timed batches per loader per round."""
    warmup: int = 6
    spatial: int = -1
    """Inner chunk side in native pixels: -1 = the corpus default, 0 = the whole tile."""

    @property
    def chunking(self) -> InnerChunking:
        if self.spatial < 0:
            return InnerChunking()
        return InnerChunking(spatial=self.spatial or None)

    @property
    def cache(self) -> Path:
        side = self.chunking.spatial or "tile"
        name = f"terracube-loader-bench-{FORMAT}-{self.samples}x{self.periods}-s{self.per_shard}"
        return Path(tempfile.gettempdir()) / f"{name}-c{side}"


def synthetic_sample(i: int, n_periods: int, rng: np.random.Generator) -> SampleData:
    """Smooth fields plus sensor-like noise: compresses like real imagery, not like zeros."""
    groups: dict[str, np.ndarray] = {}
    fractions: dict[str, np.ndarray] = {}
    for name, g in BAND_GROUPS.items():
        temporal = MODALITIES[g.modality].temporal
        t = n_periods if temporal else 1
        yy, xx = np.meshgrid(np.arange(g.pixels), np.arange(g.pixels), indexing="ij")
        field = np.sin(yy / 9.0 + i) + np.cos(xx / 13.0)
        shape = (t, len(g.bands), g.pixels, g.pixels)
        if name == "s1":
            arr = (-14 + 3 * field + rng.normal(0, 1.5, shape)).astype(np.float32)
        elif name == "worldcover":
            codes = np.array(sorted(WORLDCOVER_CLASSES), dtype=np.uint8)
            arr = codes[((field + 2) * 2.5).astype(int) % len(codes)][None, None]
        elif name == "osm":
            arr = np.where(rng.random(shape) < 0.05, rng.integers(1, 101, shape), 0)
            arr = arr.astype(np.uint8)
        else:
            arr = (2000 + 800 * field + rng.normal(0, 60, shape)).clip(1, 65535).astype(np.uint16)
        groups[name] = arr if temporal else arr[0]
        fractions[name] = np.ones(t, np.float32) if temporal else np.float32(1.0)
    return SampleData(
        tile_id=f"32631_{i}_0",
        epsg=32631,
        x0=399_360.0 + 2560 * i,
        y0=5_002_240.0,
        center_lon=3.0,
        center_lat=45.0,
        period_starts=np.array(
            [np.datetime64("2024-01-01") + np.timedelta64(30 * k, "D") for k in range(n_periods)]
        ).astype("datetime64[D]"),
        groups=groups,
        valid_fraction=fractions,
        states={m: SampleState.DONE for m in MODALITIES},
    )


def ensure_corpus(cfg: BenchConfig) -> Path:
    """The Zarr corpus and the HDF5 files, built once (shard by shard) and reused."""
    if (cfg.cache / "complete").exists():
        return cfg.cache
    shutil.rmtree(cfg.cache, ignore_errors=True)
    (cfg.cache / "h5").mkdir(parents=True)
    corpus = create_corpus(
        cfg.cache / "corpus.zarr", cfg.samples, cfg.periods, cfg.per_shard, chunking=cfg.chunking
    )
    rng = np.random.default_rng(0)
    for k, span in enumerate(corpus.shards):
        samples = [synthetic_sample(i, cfg.periods, rng) for i in span]
        corpus.write_shard(k, samples)
        for i, s in zip(span, samples, strict=True):
            with h5py.File(cfg.cache / "h5" / f"{i:06d}.h5", "w") as fh:
                for name, arr in s.groups.items():
                    chunks = (1, *arr.shape[1:]) if arr.ndim == 4 else arr.shape
                    fh.create_dataset(name, data=arr, chunks=chunks, **hdf5plugin.Zstd(clevel=3))
    (cfg.cache / "complete").touch()
    return cfg.cache


class DecodeFloor:
    """Every shard's bytes in memory; decodes the chunks of given samples' windows."""

    def __init__(self, path: Path) -> None:
        corpus = Corpus.open(path)
        self.shards = corpus.shards
        self.groups = tuple(corpus.params.groups)
        self.layouts: dict[str, ShardLayout] = {}
        self.scratch: dict[str, np.ndarray] = {}
        self.bytes: dict[tuple[str, int], tuple[bytes, np.ndarray]] = {}
        for g in self.groups:
            arr = corpus.array(g)
            layout = ShardLayout(tuple(arr.shards), tuple(arr.chunks))
            self.layouts[g] = layout
            self.scratch[g] = np.empty(layout.chunk_shape[1:], dtype=arr.dtype)
            for k in range(len(self.shards)):
                key = arr.metadata.encode_chunk_key((k, *([0] * (len(layout.grid) - 1))))
                raw = (path / g / key).read_bytes()
                index = parse_index(str(path / g / key), raw[-layout.index_bytes :], layout)
                self.bytes[(g, k)] = (raw, index)

    def decode(self, plans: list[BatchPlan]) -> tuple[float, int, int]:
        """Seconds, bytes decoded and samples for the chunks these batches' samples need."""
        codec = numcodecs.Zstd()
        n = self.shards[0].stop - self.shards[0].start
        work = []
        for plan in plans:
            for b, sample in enumerate(plan.samples):
                k, local = divmod(sample, n)
                for g in self.groups:
                    raw, index = self.bytes[(g, k)]
                    chunks = window_chunks(self.layouts[g], local, sample_window(g, plan, b))
                    for offset, nbytes in index[chunks.flats].tolist():
                        work.append((memoryview(raw)[offset : offset + nbytes], self.scratch[g]))
        t0 = time.perf_counter()
        total = 0
        for view, out in work:
            total += codec.decode(view, out=out).nbytes
        return time.perf_counter() - t0, total, sum(len(p.samples) for p in plans)


def read_h5(root: Path, plans: list[BatchPlan], groups: tuple[str, ...]) -> tuple[float, int]:
    """Seconds and samples for h5py reads of the same windows, one file per sample."""
    t0 = time.perf_counter()
    n = 0
    for plan in plans:
        for b, sample in enumerate(plan.samples):
            with h5py.File(root / "h5" / f"{sample:06d}.h5", "r") as fh:
                for g in groups:
                    fh[g][tuple(slice(a, z) for a, z in sample_window(g, plan, b))]
            n += 1
    return time.perf_counter() - t0, n


ZARR_PIPELINES = {
    "zarr": "zarr.core.codec_pipeline.BatchedCodecPipeline",
    "zarrs": "zarrs.ZarrsCodecPipeline",
}
"""zarr-python's own codec pipeline and zarrs' Rust one (a config string, not an import)."""


def read_zarr(
    path: Path, plans: list[BatchPlan], groups: tuple[str, ...], pipeline: str
) -> tuple[float, int]:
    """Seconds and samples for zarr-python selections of the same windows, arrays opened
    under `pipeline` (the codec pipeline is chosen when an array is opened)."""
    with zarr.config.set({"codec_pipeline.path": ZARR_PIPELINES[pipeline]}):
        root = zarr.open_group(str(path), mode="r")
        arrays = {g: root[g] for g in groups}
        t0 = time.perf_counter()
        n = 0
        for plan in plans:
            for b, sample in enumerate(plan.samples):
                for g in groups:
                    window = sample_window(g, plan, b)
                    np.asarray(arrays[g][(sample, *(slice(a, z) for a, z in window))])
                n += 1
        return time.perf_counter() - t0, n


def zarr_pipelines() -> list[str]:
    """The pipelines this environment has (zarrs is a test extra; say so when absent)."""
    names = ["zarr"]
    try:
        import zarrs  # noqa: F401
    except ImportError:
        print("zarrs is not installed: its figure is left out (pip install zarrs)")
    else:
        names.append("zarrs")
    return names


def read_h5_whole(root: Path, samples: list[int], groups: tuple[str, ...]) -> tuple[float, int]:
    """Seconds and samples for whole-sample h5py reads (every period, whole tile): how a
    per-sample HDF5 dataset that crops after reading works; context, not the JSON peer."""
    t0 = time.perf_counter()
    for sample in samples:
        with h5py.File(root / "h5" / f"{sample:06d}.h5", "r") as fh:
            for g in groups:
                fh[g][()]
    return time.perf_counter() - t0, len(samples)


class TimedLoader:
    """A persistent loader whose batches are timed in segments of steady state."""

    def __init__(self, path: Path, params: LoaderParams, workers: int, warmup: int) -> None:
        self.loader = StreamingLoader(CorpusStream(path, params), num_workers=workers)
        self.workers = workers
        self.stream = iter(self.loader)
        for _ in range(warmup):
            next(self.stream)

    def segment(self, n: int) -> tuple[float, int, int, list[tuple[int, int]], LoaderItem]:
        """Drain what was prefetched while others ran, then time n batches. Like a training
        loop, it drops each batch before taking the next (workers reuse the shared slots
        of dropped batches), keeping only (epoch, index) of each and the first batch."""
        for _ in range(self.workers * (self.loader.prefetch_factor or 0)):
            next(self.stream)
        before = self.loader.decoded_bytes
        keys: list[tuple[int, int]] = []
        samples = 0
        t0 = time.perf_counter()
        first = next(self.stream)
        keys.append((first.epoch, first.index))
        samples += first.batch_size
        for _ in range(n - 1):
            item = next(self.stream)
            keys.append((item.epoch, item.index))
            samples += item.batch_size
            del item
        seconds = time.perf_counter() - t0
        return seconds, samples, self.loader.decoded_bytes - before, keys, first

    def close(self) -> None:
        self.stream.close()
        close = getattr(self.loader, "close", None)  # absent in loaders before persistent workers
        if close is not None:
            close()


def _children_cpu_ticks() -> int:
    """utime + stime of this process's children (the loader workers), in clock ticks."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total


def wait_for_idle_workers(quiet_s: float = 0.3, limit_s: float = 30.0) -> None:
    """After a timed segment the workers refill their prefetch queues; wait until they stop
    using CPU so that they do not steal it from the next measurement (2 cores)."""
    deadline = time.perf_counter() + limit_s
    last = _children_cpu_ticks()
    while time.perf_counter() < deadline:
        time.sleep(quiet_s)
        now = _children_cpu_ticks()
        if now == last:
            return
        last = now


def gpu_estimate(token_budget: int) -> tuple[float, int]:
    model = LatentMIM(LatentMIMConfig("base"))
    params = count_parameters(model.encoder) + count_parameters(model.decoder)
    flops = 6 * params * token_budget  # fwd + bwd; every token through the encoder or decoder
    return ASSUMED_MFU * H100_BF16_PEAK_FLOPS / flops, params


def peak_rss_mb() -> tuple[float, float]:
    """Peak RSS of this process (it holds every shard's bytes for the floor) and of the
    largest ended loader worker; Linux reports KiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own * 1024 / MB, children * 1024 / MB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field, default in BenchConfig().__dict__.items():
        ap.add_argument(f"--{field.replace('_', '-')}", type=int, default=default)
    cfg = BenchConfig(**vars(ap.parse_args()))
    torch.set_num_threads(1)
    t_build = time.perf_counter()
    root = ensure_corpus(cfg)
    path = root / "corpus.zarr"
    print(
        f"corpus: {cfg.samples} samples x {cfg.periods} periods, every band group, {root} "
        f"(ready in {time.perf_counter() - t_build:.0f} s; reused when present)"
    )
    params = LoaderParams(  # the defaults: crops 32/64/128 px, patches 4/8 px
        batch_size=cfg.batch_size,
        token_budget=cfg.token_budget,
        shuffle_buffer=cfg.shuffle_buffer,
    )
    # fork the workers first, so they do not inherit the floor's in-memory shards
    loaders = {w: TimedLoader(path, params, w, cfg.warmup) for w in (1, 2)}
    floor = DecodeFloor(path)
    wait_for_idle_workers()
    plans: dict[tuple[int, int], BatchPlan] = {}
    rows: list[dict[str, float]] = []
    pipelines = zarr_pipelines()
    for _ in range(cfg.rounds):
        row: dict[str, float] = {}
        timed: list[tuple[int, int]] = []
        kept: LoaderItem | None = None
        for w, run in loaders.items():
            seconds, samples, nbytes, keys, first = run.segment(cfg.batches)
            wait_for_idle_workers()
            row[f"sps_{w}"], row[f"mbs_{w}"] = samples / seconds, nbytes / MB / seconds
            if not timed:
                timed, kept = keys, first
            del first
        for epoch, index in timed:
            if (epoch, index) not in plans:
                dataset = loaders[1].loader.dataset
                plans.update({(epoch, p.index): p for p in dataset.plans(epoch, 0, 1)})
        batch_plans = [plans[key] for key in timed]
        seconds, nbytes, samples = floor.decode(batch_plans)
        row["floor_sps"], row["floor_mbs"] = samples / seconds, nbytes / MB / seconds
        assert kept is not None
        t0 = time.perf_counter()
        for _ in range(3):
            kept.raw.materialize(kept.normalizers, "cpu")
        row["materialize_ms"] = (time.perf_counter() - t0) * 1e3 / 3
        del kept
        seconds, samples = read_h5(root, batch_plans, floor.groups)
        row["h5_sps"] = samples / seconds
        for name in pipelines:
            seconds, samples = read_zarr(path, batch_plans, floor.groups, name)
            row[f"{name}_sps"] = samples / seconds
        whole = [s for p in batch_plans for s in p.samples][: cfg.batch_size * 3]
        seconds, samples = read_h5_whole(root, whole, floor.groups)
        row["h5_whole_sps"] = samples / seconds
        rows.append(row)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    ratio = statistics.median(r["sps_1"] / r["floor_sps"] for r in rows)
    h5_speedup = statistics.median(r["sps_1"] / r["h5_sps"] for r in rows)
    print(
        f"{cfg.rounds} interleaved rounds of {cfg.batches} batches x {cfg.batch_size} samples; "
        "medians (min..max)"
    )

    def spread(key: str) -> str:
        values = [r[key] for r in rows]
        return f"{median(key):7.1f} ({min(values):.1f}..{max(values):.1f})"

    print(
        "decode floor = zstd of exactly the inner chunks the loader decodes for the same "
        "samples (timestep window x crop), bytes in memory, one thread, reused buffer"
    )
    print(f"  decode floor:       {spread('floor_sps')} samples/s  {median('floor_mbs'):7.1f} MB/s")
    for w in loaders:
        print(
            f"  loader, {w} worker(s): {spread(f'sps_{w}')} samples/s  "
            f"{median(f'mbs_{w}'):7.1f} MB/s decoded"
        )
    print(
        f"  consumer side, on this CPU: normalise + 10 m repeat {median('materialize_ms'):.1f} "
        f"ms per batch of {cfg.batch_size} (not in the loader figures; on a GPU it runs there)"
    )
    print(
        f"  per-sample HDF5 (h5py, zstd-3 hdf5plugin, same windows): {spread('h5_sps')} samples/s"
    )
    for name in pipelines:
        speedup = statistics.median(r["sps_1"] / r[f"{name}_sps"] for r in rows)
        print(
            f"  {name} selections ({ZARR_PIPELINES[name].rsplit('.', 1)[1]}, same windows, in "
            f"this process): {spread(f'{name}_sps')} samples/s; 1-worker loader = {speedup:.2f} x"
        )
    whole_speedup = statistics.median(r["sps_1"] / r["h5_whole_sps"] for r in rows)
    print(
        f"  per-sample HDF5, whole sample then crop (context only): {spread('h5_whole_sps')} "
        f"samples/s; 1-worker loader = {whole_speedup:.2f} x that"
    )
    print(
        f"  1-worker loader / decode floor: {ratio:.2f}   1-worker loader / HDF5 (same windows, "
        f"the JSON h5_speedup): {h5_speedup:.2f}"
    )
    for run in loaders.values():
        run.close()
    gc.collect()
    own_rss, worker_rss = peak_rss_mb()  # before the estimate builds a base model here
    print(
        f"peak RSS: benchmark process {own_rss:.0f} MB (includes the floor's in-memory shards), "
        f"largest loader worker {worker_rss:.0f} MB"
    )
    gpu_sps, n_params = gpu_estimate(cfg.token_budget)
    print(
        f"ESTIMATE: one H100 training the base model ({n_params / 1e6:.0f} M encoder+decoder "
        f"parameters, {cfg.token_budget} tokens/sample, 6*P*tokens FLOPs, attention left out, "
        f"{ASSUMED_MFU:.0%} MFU of {H100_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16) "
        f"consumes ~{gpu_sps:.0f} samples/s"
    )
    summary = {
        "samples_per_s_1": round(median("sps_1"), 2),
        "samples_per_s_2": round(median("sps_2"), 2),
        "decode_floor_ratio": round(ratio, 3),
        "h5_speedup": round(h5_speedup, 3),
        **{
            f"{name}_speedup": round(
                statistics.median(r["sps_1"] / r[f"{name}_sps"] for r in rows), 3
            )
            for name in pipelines
        },
        "peak_rss_mb": round(max(own_rss, worker_rss), 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
