"""Latent MIM training-step speed and memory on a realistic batch, against a floor.

The batch is the one a pretraining run sees: 8 samples, 12 timesteps, 64 x 64 px, every
band group of the registry (five modalities), 3 % invalid pixels, two views masked by
the recipe's masking (default: OlmoEarth v1's modality_cross_random), at patch size 8
and 4. A step is what `terracube pretrain` does per batch: forward of both views
(tokenizer, encoder, decoder, frozen targets, losses), backward, gradient clipping and
AdamW. Each (size, patch size, device) runs in its own process so its peak RSS is its own.

Figures per configuration: tokens per step (every token of the batch, patch x timestep x
band group), encoded and decoded tokens per step (both views), seconds per step, tokens/s,
peak RSS. `_floor_ratio` = floor time / our time, the floor (same run, same process) a
plain `torch.nn.TransformerEncoder` (pre-LN, same width/depth/heads) doing forward and
backward over the encoded tokens of both views (each sample's as one sequence): the
encoder's unavoidable work, so the ratio shows what tokenizing, decoding and the losses add.
With `--reference-script` (allenai/olmoearth_pretrain's official step, prepared outside
this repository, see docs/model.md) the reference runs on the same batch shape in the same
session and `_vs_reference_speedup` / `_vs_reference_rss_ratio` compare the two.
On CUDA (bf16 autocast) `_mfu` is the analytic FLOP count over time and the device's peak.
The last line is one JSON object.

Run: .venv/bin/python benchmarks/model_step.py [--steps N] [--patches 8,4] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

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


def peak_flops(device_name: str) -> float | None:
    """First table key (longest first) contained in the CUDA device name."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def total_tokens(batch: Batch) -> int:
    h, w = batch.grid
    return sum(x.shape[0] * x.shape[1] * h * w for x in batch.data.values())


def per_sample(view: ViewMasks, side: int) -> torch.Tensor:
    return sum((c[side] for c in view.counts.values()), torch.zeros(1, dtype=torch.long))


def step_flops(model: LatentMIM, batch: Batch, views: list[ViewMasks]) -> float:
    """Forward FLOPs x 3 (backward ~ 2x forward) of the matmuls and attention of one step."""
    size: ModelSize = model.size
    d, dt, p = size.dim, model.target.target_dim, batch.patch_size
    k = model.config.base_patch_size
    h, w = batch.grid
    flops = 0.0
    for g in batch.groups:  # tokenizer (online) and target convs, at the base kernel size
        n = batch.data[g].shape[0] * batch.data[g].shape[1] * h * w
        kernel = p * p if model.config.patch_resize == "pi_kernel" else k * k
        online = 2 * n * group_channels(g) * kernel * d if g in model.tokenizer.embed else 0
        flops += online + 2 * n * group_channels(g) * kernel * dt / 3  # target: no backward
    for view in views:
        enc, dec = per_sample(view, 0).double(), per_sample(view, 1).double()
        flops += float((24 * enc * d * d + 4 * enc * enc * d).sum()) * size.depth
        cross = 4 * dec * d * d + 4 * enc * d * d + 16 * dec * d * d + 4 * dec * enc * d
        flops += float(cross.sum()) * model.config.depth_of_decoder
        flops += float((2 * enc * d * d + 2 * dec * d * dt + 2 * dec * dec * dt).sum())
    return 3 * flops


def plain_floor(
    size: ModelSize, views: list[ViewMasks], device: torch.device
) -> Callable[[], None]:
    layer = nn.TransformerEncoderLayer(
        size.dim, size.heads, int(size.dim * size.mlp_ratio), dropout=0.0,
        activation="gelu", batch_first=True, norm_first=True,
    )  # fmt: skip
    floor = nn.TransformerEncoder(layer, size.depth, enable_nested_tensor=False).to(device)
    inputs = [
        torch.randn(len(per_sample(v, 0)), int(per_sample(v, 0).max()), size.dim, device=device)
        for v in views
    ]

    def step() -> None:
        floor.zero_grad(set_to_none=True)
        with autocast(device):
            loss = sum(floor(x).float().square().mean() for x in inputs)
        assert isinstance(loss, torch.Tensor)
        loss.backward()

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


def bench_one(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration, in this process (the parent runs each in its own)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    batch = synthetic_batch(
        args.batch_size, args.timesteps, args.px, args.patch,
        generator=torch.Generator().manual_seed(0), valid_fraction=0.97,
    )  # fmt: skip
    views = mask_batch(batch, torch.Generator().manual_seed(1))  # done in workers in training
    batch = batch.to(device)
    views = [v.to(device) for v in views]
    model = LatentMIM(LatentMIMConfig(size=args.size)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.02)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = model(batch, views)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    seconds = time_steps(step, device, args.steps)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the floor runs
    floor_seconds = time_steps(plain_floor(model.size, views, device), device, args.steps)
    key = f"{args.size}_p{args.patch}_{device.type}"
    tokens = total_tokens(batch)
    encoded = sum(int(per_sample(v, 0).sum()) for v in views)
    decoded = sum(int(per_sample(v, 1).sum()) for v in views)
    result: dict[str, Any] = {
        f"{key}_tokens_per_step": tokens,
        f"{key}_encoded_per_step": encoded,
        f"{key}_decoded_per_step": decoded,
        f"{key}_s_per_step": seconds,
        f"{key}_tokens_per_s": tokens / seconds,
        f"{key}_floor_ratio": floor_seconds / seconds,
        f"{key}_peak_rss_mb": rss_mb,
    }
    if device.type == "cuda":
        result[f"{key}_peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        peak = peak_flops(torch.cuda.get_device_name(device))
        if peak is not None:
            result[f"{key}_mfu"] = step_flops(model, batch, views) / seconds / peak
    return result


def run_child(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])


def reference(args: argparse.Namespace, patch: int) -> dict[str, Any] | None:
    """The reference's official step on the same batch shape (its own masking); None when
    it fails (on this 24 GB machine it is killed for memory at the full batch)."""
    cmd = [sys.executable, args.reference_script, "--patch-size", str(patch),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--timesteps", str(args.timesteps), "--px", str(args.px)]  # fmt: skip
    try:
        return run_child(cmd)
    except subprocess.CalledProcessError as exc:
        print(
            f"reference p={patch}: failed ({exc.returncode}: {'killed, out of memory?' if exc.returncode == -9 else exc.stderr[-300:]})"
        )
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per figure (CPU)")
    parser.add_argument("--cuda-steps", type=int, default=20, help="timed steps per figure (CUDA)")
    parser.add_argument("--devices", default="cpu,cuda", help="comma list; cuda skipped if absent")
    parser.add_argument("--sizes", default="nano")
    parser.add_argument("--patches", default="8,4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--timesteps", type=int, default=12)
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--reference-script", default=None, help="the reference's step script")
    parser.add_argument(
        "--one", nargs=3, metavar=("SIZE", "PATCH", "DEVICE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        args.size, args.patch, args.device = args.one[0], int(args.one[1]), args.one[2]
        print(json.dumps(bench_one(args)))
        return
    for name in args.sizes.split(","):
        model_size(name)
    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}")
    print(f"batch: {args.batch_size} samples x {args.timesteps} timesteps x {args.px} px")
    results: dict[str, float] = {}
    for dev in args.devices.split(","):
        if dev == "cuda" and not torch.cuda.is_available():
            print("cuda: not available, skipped")
            continue
        steps = args.cuda_steps if dev == "cuda" else args.steps
        for name in args.sizes.split(","):
            for patch in (int(p) for p in args.patches.split(",")):
                cmd = [sys.executable, __file__, "--one", name, str(patch), dev,
                       "--steps", str(steps), "--batch-size", str(args.batch_size),
                       "--timesteps", str(args.timesteps), "--px", str(args.px)]  # fmt: skip
                got = run_child(cmd)
                key = f"{name}_p{patch}_{dev}"
                line = (
                    f"{key}: {got[key + '_tokens_per_step']} tokens/step "
                    f"({got[key + '_encoded_per_step']} encoded, "
                    f"{got[key + '_decoded_per_step']} decoded), "
                    f"{got[key + '_s_per_step']:.2f} s/step, "
                    f"{got[key + '_tokens_per_s']:,.0f} tokens/s, floor ratio "
                    f"{got[key + '_floor_ratio']:.2f}, peak RSS {got[key + '_peak_rss_mb']:,.0f} MB"
                )
                if args.reference_script and dev == "cpu" and name == "nano":
                    ref = reference(args, patch)
                if args.reference_script and dev == "cpu" and name == "nano" and ref is None:
                    got[f"{key}_reference_failed"] = 1
                elif args.reference_script and dev == "cpu" and name == "nano":
                    assert ref is not None
                    got[f"{key}_reference_s_per_step"] = ref["sec_per_step"]
                    got[f"{key}_reference_peak_rss_mb"] = ref["peak_rss_mib"]
                    got[f"{key}_vs_reference_speedup"] = (
                        ref["sec_per_step"] / got[key + "_s_per_step"]
                    )
                    got[f"{key}_vs_reference_rss_ratio"] = (
                        got[key + "_peak_rss_mb"] / ref["peak_rss_mib"]
                    )
                    line += (
                        f"; reference {ref['sec_per_step']:.2f} s/step, {ref['peak_rss_mib']:,.0f} MB "
                        f"(encoded/decoded per view {ref.get('tokens_view_a')}): "
                        f"{got[key + '_vs_reference_speedup']:.2f}x faster, "
                        f"{got[key + '_vs_reference_rss_ratio']:.2f}x the memory"
                    )
                print(line, flush=True)
                results.update(got)
    results["peak_rss_mb"] = max(
        v for k, v in results.items() if k.endswith("_peak_rss_mb") and "reference" not in k
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
