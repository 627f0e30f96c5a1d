"""Base-size pretraining steps on a CUDA device fed by the streaming loader: step time,
MFU and the share of each step spent waiting for data.

What runs is `terracube pretrain`'s step (bf16 autocast, SDPA, AdamW, clipping) on a
synthetic corpus built on the machine (benchmarks/loader.py's generator: every band
group, smooth fields plus noise, so zstd has real work), read by `StreamingLoader` with
`--workers` processes at the given crop and patch size. The first `--warmup` steps
(worker start-up, autotuning, allocator growth) are not timed; then for `--steps` steps
the clock splits each step into waiting for the next batch and the rest (the
host-to-device copy, the forward, backward and optimizer step), with one device
synchronisation per step. MFU is the step's analytic FLOPs (benchmarks/model_step.py's
count) over its time and the device's peak dense bf16 rate. The last line is one JSON
object: base_step_s, base_mfu, data_wait_share, samples_per_s, tokens_per_s (encoded +
decoded tokens),
peak_cuda_mb. `--device cpu` runs the same code (tiny settings) as a smoke test.

Run: benchmarks/gpu_step.sh (sets up the environment), or
     python benchmarks/gpu_step.py [--size base] [--steps 30] [--crop 64] [--patch 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import BenchConfig, ensure_corpus
from model_step import peak_flops, step_flops
from terracube.model.data.loader import CorpusStream
from terracube.model.data.plan import LoaderParams
from terracube.model.data.stream import StreamingLoader
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="the reference's microbatch")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--samples", type=int, default=512, help="corpus samples to build")
    parser.add_argument("--periods", type=int, default=12)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_step: torch sees no CUDA device; pass --device cpu for a smoke run")
    torch.backends.cuda.matmul.allow_tf32 = True
    corpus = ensure_corpus(replace(BenchConfig(), samples=args.samples, periods=args.periods))
    params = LoaderParams(
        batch_size=args.batch_size, crop_sizes=(args.crop,), patch_sizes=(args.patch,),
        token_budget=10**9, drop_last=True,
    )  # fmt: skip
    loader = StreamingLoader(CorpusStream(str(corpus / "corpus.zarr"), params), args.workers)
    torch.manual_seed(0)
    model = LatentMIM(LatentMIMConfig(size=args.size)).to(device).train()
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.02)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    items = iter(loader)
    waits, steps, flops, samples, tokens = [], [], 0.0, 0, 0
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            items = iter(loader)
            item = next(items)
        t1 = time.perf_counter()
        batch = item.to(device)
        views = [v.to(device, non_blocking=True) for v in item.views]
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = forward(batch, views)
        out["loss"].float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= args.warmup:
            waits.append(t1 - t0)
            steps.append(t2 - t0)
            flops += step_flops(model, batch, list(item.views))
            samples += batch.batch_size
            tokens += sum(int(c.sum()) for v in item.views for c in v.counts.values())
    total = sum(steps)
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    result = {
        f"{args.size}_step_s": total / len(steps),
        f"{args.size}_mfu": flops / total / peak if peak else None,
        "data_wait_share": sum(waits) / total,
        "samples_per_s": samples / total,
        "tokens_per_s": tokens / total,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
        "batch": f"{args.batch_size} x {args.crop} px, p={args.patch}, {args.periods} periods",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    print(
        f"{args.size}: {result[f'{args.size}_step_s'] * 1e3:.1f} ms/step, "
        f"data wait {result['data_wait_share']:.1%}, {result['samples_per_s']:.0f} samples/s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
