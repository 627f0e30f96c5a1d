"""Latent MIM training-step throughput of nano and tiny, against a plain-transformer floor.

For each size and patch size (4, 8) on CPU (and CUDA when present, bf16 autocast) this
times one full training step (two masked views: tokenize, encode, decode, losses,
backward) on a fixed realistic batch on CUDA (8 samples, 64 x 64 px, 4 timesteps, every
band group of the registry, ~3 % invalid pixels); on CPU a reduced batch (2 samples,
32 x 32 px, 2 timesteps) keeps the run under ~2 minutes on 2 cores. Tokens/s counts every token of the batch
(patch x timestep x band group) per step. The floor, measured in the same run, is a
plain `torch.nn.TransformerEncoder` (batch_first, pre-LN, same width/depth/heads) doing
forward + backward on the same number of tokens (each sample's tokens as one
sequence); `_floor_ratio` = ours / floor. On CUDA, `mfu` is the analytic FLOP count of
the step (matmuls and attention of both views, x3 for backward) over the time and the
device's peak dense bf16 FLOP/s. The last line is one JSON object.

Run: .venv/bin/python benchmarks/model_step.py [--steps N] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from terracube.model.nn.batch import Batch
from terracube.model.nn.encoder import ModelSize, model_size
from terracube.model.nn.groups import group_channels
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.model.nn.synthetic import synthetic_batch
from terracube.model.train.masking import ViewMasks, mask_batch
from torch import nn

PEAK_BF16_FLOPS: dict[str, float] = {
    # dense (no sparsity) bf16 tensor-core peaks from the vendor data sheets
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
}


@dataclass(frozen=True)
class BenchBatch:
    batch_size: int = 8
    size_px: int = 64
    timesteps: int = 4
    valid_fraction: float = 0.97


BATCHES = {"cuda": BenchBatch(), "cpu": BenchBatch(batch_size=2, size_px=32, timesteps=2)}


def peak_flops(device_name: str) -> float | None:
    """First table key (longest first) contained in the CUDA device name."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def total_tokens(batch: Batch) -> int:
    h, w = batch.grid
    return sum(x.shape[0] * x.shape[1] * h * w for x in batch.data.values())


def step_flops(model: LatentMIM, batch: Batch, views: list[ViewMasks]) -> float:
    """Forward FLOPs x 3 (backward ~ 2x forward) of the matmuls and attention of one step."""
    size: ModelSize = model.size
    d, dt, p = size.dim, model.target.target_dim, batch.patch_size
    h, w = batch.grid
    flops = 0.0
    # tokenizer convs: every token of every encodable group (computed for all, not only visible)
    for g in batch.groups:
        n = batch.data[g].shape[0] * batch.data[g].shape[1] * h * w
        if g in model.tokenizer.embed:
            flops += 2 * n * group_channels(g) * p * p * d
    for view in views:
        enc = sum(m.flatten(1).sum(1) for m in view.encode.values()).double()  # (B,)
        dec = sum(m.flatten(1).sum(1) for m in view.decode.values()).double()
        per_layer = 24 * enc * d * d + 4 * enc * enc * d
        flops += float(per_layer.sum()) * size.depth
        cross = 4 * dec * d * d + 4 * enc * d * d + 16 * dec * d * d + 4 * dec * enc * d
        flops += float(cross.sum()) * size.decoder_depth
        flops += float((2 * enc * d * d + 2 * dec * d * dt + 2 * dec * dec * dt).sum())
    return 3 * flops


def plain_floor(size: ModelSize, batch: Batch, device: torch.device) -> Callable[[], None]:
    layer = nn.TransformerEncoderLayer(
        size.dim,
        size.heads,
        int(size.dim * size.mlp_ratio),
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    floor = nn.TransformerEncoder(layer, size.depth, enable_nested_tensor=False).to(device)
    seq = total_tokens(batch) // batch.batch_size
    x = torch.randn(batch.batch_size, seq, size.dim, device=device)

    def step() -> None:
        floor.zero_grad(set_to_none=True)
        with autocast(device):
            out = floor(x)
        out.float().square().mean().backward()

    return step


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def time_steps(step: Callable[[], None], device: torch.device, steps: int) -> float:
    """Seconds per step after one warm-up step."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bench(size_name: str, patch: int, device: torch.device, steps: int, spec: BenchBatch) -> dict:
    torch.manual_seed(0)
    batch = synthetic_batch(
        spec.batch_size,
        spec.timesteps,
        spec.size_px,
        patch,
        generator=torch.Generator().manual_seed(0),
        valid_fraction=spec.valid_fraction,
    )
    views = mask_batch(batch, torch.Generator().manual_seed(1))  # done in workers in training
    batch = batch.to(device)
    views = [
        ViewMasks(
            {g: m.to(device) for g, m in v.encode.items()},
            {g: m.to(device) for g, m in v.decode.items()},
        )
        for v in views
    ]
    model = LatentMIM(LatentMIMConfig(size=size_name)).to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast(device):
            loss = model(batch, views)["loss"]
        loss.backward()

    seconds = time_steps(step, device, steps)
    floor_seconds = time_steps(plain_floor(model.size, batch, device), device, steps)
    tokens = total_tokens(batch)
    key = f"{size_name}_p{patch}_{device.type}"
    result = {key: tokens / seconds, f"{key}_floor_ratio": floor_seconds / seconds}
    line = (
        f"{key}: {tokens} tokens/step, {seconds * 1e3:.0f} ms/step, "
        f"{tokens / seconds:,.0f} tokens/s, floor {tokens / floor_seconds:,.0f} tokens/s, "
        f"ratio {floor_seconds / seconds:.2f}"
    )
    if device.type == "cuda":
        peak = peak_flops(torch.cuda.get_device_name(device))
        if peak is not None:
            mfu = step_flops(model, batch, views) / seconds / peak
            result[f"{key}_mfu"] = mfu
            line += f", MFU {mfu:.1%}"
    print(line, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="timed steps per figure (CPU)")
    parser.add_argument("--cuda-steps", type=int, default=20, help="timed steps per figure (CUDA)")
    parser.add_argument(
        "--devices", default="cpu,cuda", help="comma list; cuda is skipped if absent"
    )
    parser.add_argument("--sizes", default="nano,tiny")
    args = parser.parse_args()
    for name in args.sizes.split(","):
        model_size(name)
    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}")
    results: dict[str, float] = {}
    for dev in args.devices.split(","):
        if dev == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        device = torch.device(dev)
        if dev == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            print(f"cuda device: {torch.cuda.get_device_name(device)}")
        steps = args.cuda_steps if dev == "cuda" else args.steps
        spec = BATCHES[dev]
        print(f"{dev} batch: {spec}")
        for name in args.sizes.split(","):
            for patch in (8, 4):
                results.update(bench(name, patch, device, steps, spec))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        results["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
