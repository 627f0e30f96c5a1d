"""Loader throughput against the raw decode floor and a per-sample HDF5 peer, same run.

Builds a synthetic corpus (every registry band group, structured values plus
noise so zstd has real work), then measures over one epoch:

- the streaming loader (`StreamingLoader`) with 1 and 2 DataLoader workers:
  samples/s and MB/s decoded (crop, normalise, upsample and masking included),
  in steady state: timed from the first batch's arrival (worker start-up excluded);
- the decode floor: numcodecs zstd decode of exactly the inner chunks the loader
  decodes, from shard bytes already in memory, one thread, no Python-level work
  beyond a loop over chunks;
- the same samples stored OlmoEarth-style as one HDF5 file per sample (one
  dataset per band group, chunked per timestep), read whole with h5py; zstd-3
  when hdf5plugin is installed, else gzip-3 (printed);
- an *estimate* of the samples/s one H100 would consume training the base model
  (6 x parameters x tokens FLOPs per sample, attention FLOPs left out, at the
  stated bf16 peak and MFU).

The last line is one JSON object with samples_per_s_1, samples_per_s_2,
decode_floor_ratio (1-worker loader / 1-thread floor), h5_speedup (1-worker
loader / HDF5 reader) and peak_rss_mb (this process and its workers).

    .venv/bin/python benchmarks/loader.py [--samples 16] [--periods 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from itertools import islice
from pathlib import Path

import h5py
import numcodecs
import numpy as np
import torch
from terracube.catalog.registry import BAND_GROUPS, MODALITIES, WORLDCOVER_CLASSES
from terracube.model.encoder import count_parameters
from terracube.model.loader import CorpusStream, StreamingLoader
from terracube.model.loader_plan import LoaderParams
from terracube.model.olmoearth import LatentMIM, LatentMIMConfig
from terracube.pipeline.corpus import Corpus, SampleData, SampleState, create_corpus

H100_BF16_PEAK_FLOPS = 989e12
"""H100 SXM dense bf16 peak (NVIDIA datasheet)."""
ASSUMED_MFU = 0.40
MB = 1e6


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
            arr = np.where(rng.random(shape) < 0.05, rng.integers(1, 101, shape), 0).astype(
                np.uint8
            )
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


def build(root: Path, n: int, periods: int, per_shard: int) -> tuple[Path, list[SampleData]]:
    path = root / "corpus.zarr"
    corpus = create_corpus(path, n, periods, per_shard)
    rng = np.random.default_rng(0)
    samples = [synthetic_sample(i, periods, rng) for i in range(n)]
    for k, span in enumerate(corpus.shards):
        corpus.write_shard(k, [samples[i] for i in span])
    return path, samples


def shard_chunks(path: Path) -> list[tuple[bytes, list[tuple[int, int]]]]:
    """Every data shard file in memory with its (offset, nbytes) chunk index (zarr v3 sharding:
    index at the end, 16 bytes per inner chunk, then a 4-byte crc32c)."""
    corpus = Corpus.open(path)
    out = []
    for name in corpus.params.groups:
        arr = corpus.array(name)
        n_chunks = int(np.prod([s // c for s, c in zip(arr.shards, arr.chunks, strict=True)]))
        for f in sorted((path / name / "c").rglob("*")):
            if not f.is_file():
                continue
            raw = f.read_bytes()
            index = np.frombuffer(raw[-(16 * n_chunks + 4) : -4], dtype="<u8").reshape(-1, 2)
            chunks = [(int(o), int(n)) for o, n in index if o != np.iinfo(np.uint64).max]
            out.append((raw, chunks))
    return out


def decode_floor(shards: list[tuple[bytes, list[tuple[int, int]]]]) -> tuple[float, int]:
    codec = numcodecs.Zstd()
    view_of = [memoryview(raw) for raw, _ in shards]
    t0 = time.perf_counter()
    total = 0
    for (_, chunks), view in zip(shards, view_of, strict=True):
        for offset, nbytes in chunks:
            total += len(codec.decode(view[offset : offset + nbytes]))
    return time.perf_counter() - t0, total


def write_h5(root: Path, samples: list[SampleData]) -> str:
    try:
        import hdf5plugin

        compression: dict = dict(hdf5plugin.Zstd(clevel=3))
        label = "zstd-3 (hdf5plugin)"
    except ImportError:
        compression = {"compression": "gzip", "compression_opts": 3}
        label = "gzip-3 (hdf5plugin is not installed, so h5py has no zstd filter)"
    folder = root / "h5"
    folder.mkdir()
    for i, s in enumerate(samples):
        with h5py.File(folder / f"{i:06d}.h5", "w") as fh:
            for name, arr in s.groups.items():
                chunks = (1, *arr.shape[1:]) if arr.ndim == 4 else arr.shape
                fh.create_dataset(name, data=arr, chunks=chunks, **compression)
    return label


def read_h5(root: Path, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        with h5py.File(root / "h5" / f"{i:06d}.h5", "r") as fh:
            for name in fh:
                fh[name][()]
    return time.perf_counter() - t0


def loader_epoch(
    path: Path, params: LoaderParams, workers: int
) -> tuple[float, int, int, int, float]:
    """Steady state: the clock starts when the first batch arrives (worker start-up, a
    one-off per epoch, is excluded); returns seconds, samples and bytes after it, and all
    samples seen."""
    loader = StreamingLoader(CorpusStream(path, params), num_workers=workers)
    n_batches = loader.dataset.batches_in_epoch(0, workers)
    items = islice(loader, n_batches)
    start = time.perf_counter()
    first = next(items)
    first_bytes = loader.decoded_bytes
    t0 = time.perf_counter()
    samples = sum(item.batch.batch_size for item in items)
    end = time.perf_counter()
    seen = samples + first.batch.batch_size
    return end - t0, samples, loader.decoded_bytes - first_bytes, seen, seen / (end - start)


def gpu_estimate(token_budget: int) -> tuple[float, int]:
    model = LatentMIM(LatentMIMConfig("base"))
    params = count_parameters(model.encoder) + count_parameters(model.decoder)
    flops = 6 * params * token_budget  # fwd + bwd; every token through the encoder or decoder
    return ASSUMED_MFU * H100_BF16_PEAK_FLOPS / flops, params


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024 / MB  # Linux reports KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--periods", type=int, default=6)
    ap.add_argument("--per-shard", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--token-budget", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="terracube-loader-bench-"))
    try:
        path, samples = build(root, args.samples, args.periods, args.per_shard)
        h5_label = write_h5(root, samples)
        del samples
        params = LoaderParams(
            batch_size=args.batch_size,
            crop_sizes=(32, 64, 128),
            patch_sizes=(4, 8),
            token_budget=args.token_budget,
            shuffle_buffer=16,
            drop_last=False,
        )
        floor_s, floor_bytes = decode_floor(shard_chunks(path))
        floor_sps = args.samples / floor_s
        print(f"corpus: {args.samples} samples x {args.periods} periods, every band group")
        print(
            f"decode floor (zstd, 1 thread): {floor_sps:8.1f} samples/s  {floor_bytes / MB / floor_s:8.1f} MB/s"
        )
        results = {}
        for workers in (1, 2):
            seconds, n, decoded, seen, whole = loader_epoch(path, params, workers)
            assert seen == args.samples, f"loader yielded {seen} samples of {args.samples}"
            results[workers] = n / seconds
            print(
                f"loader, {workers} worker(s):        {n / seconds:8.1f} samples/s  "
                f"{decoded / MB / seconds:8.1f} MB/s decoded  ({n / seconds / floor_sps:.2f} x floor; "
                f"steady state, prefetch during start-up flatters it) | whole epoch with worker "
                f"start-up: {whole:.1f} samples/s"
            )
        h5_s = read_h5(root, args.samples)
        h5_sps = args.samples / h5_s
        print(f"per-sample HDF5 ({h5_label}): {h5_sps:8.1f} samples/s")
        gpu_sps, n_params = gpu_estimate(args.token_budget)
        print(
            f"ESTIMATE: one H100 training the base model ({n_params / 1e6:.0f} M encoder+decoder "
            f"parameters, {args.token_budget} tokens/sample, 6*P*tokens FLOPs, "
            f"{ASSUMED_MFU:.0%} MFU of {H100_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16) "
            f"consumes ~{gpu_sps:.0f} samples/s"
        )
        summary = {
            "samples_per_s_1": round(results[1], 2),
            "samples_per_s_2": round(results[2], 2),
            "decode_floor_ratio": round(results[1] / floor_sps, 3),
            "h5_speedup": round(results[1] / h5_sps, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        print(json.dumps(summary))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
