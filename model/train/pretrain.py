"""Latent MIM Lite pretraining from a built corpus, on one process or under torchrun DDP.

AdamW (OlmoEarth v1's settings, model/train/schedule.py) with warmup + cosine decay, gradient
clipping and accumulation; bf16 autocast (and optionally torch.compile) on GPU,
fp32 on CPU; the losses are fp32 always (model/nn/losses.py). Every
`checkpoint_interval` steps rank 0 writes model, optimizer, scheduler, loader
position and RNG states atomically; a run started with an existing checkpoint in
`checkpoint_dir` resumes from the newest one and continues bit-for-bit (on the
same device kind, world size and worker count). Rank 0 writes metrics as JSON
lines and a loss-curve PNG into `out_dir`.

DDP needs no code change: under torchrun (WORLD_SIZE > 1 in the environment) the
process group is initialised from the environment (gloo on CPU, NCCL on GPU),
each rank reads its own shards, and the loader equalises per-rank batch counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from terracube.model.data.loader import CorpusStream, LoaderItem
from terracube.model.data.plan import LoaderParams
from terracube.model.data.read_faults import DEFAULT_MAX_DECODE_ERROR_SHARE, DecodeBudget
from terracube.model.data.stream import StreamingLoader
from terracube.model.nn.olmoearth import LatentMIM, LatentMIMConfig
from terracube.model.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from terracube.model.train.diagnostics import collapse_report, collapse_warning
from terracube.model.train.schedule import OptimParams, WarmupCosine, warmup_cosine
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2
"""2: the OlmoEarth v1 recipe's modules (patch-embedding target, channel embeddings,
contrastive head); a format-1 checkpoint is refused with its format named."""
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class PretrainSettings:
    """Everything a run needs; `workflows.pretrain_config` builds it from YAML. The loader's
    settings are `LoaderParams`, the optimizer's `OptimParams`: each default is defined
    there once, and the YAML schema reads it from there."""

    store: str
    checkpoint_dir: Path
    out_dir: Path
    storage_options: dict[str, Any] = field(default_factory=dict)
    loader: LoaderParams = field(default_factory=LoaderParams)
    optim: OptimParams = field(default_factory=OptimParams)
    model: LatentMIMConfig = field(default_factory=LatentMIMConfig)
    """Size and recipe options (model/nn/olmoearth.py); YAML `model_size` and `model:`."""
    steps: int = 1000
    workers: int = 2
    """DataLoader worker processes."""
    seed: int = 0
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    compile: bool = False
    device: str = "auto"
    """auto (CUDA when available), cpu or cuda."""
    max_decode_error_share: float = DEFAULT_MAX_DECODE_ERROR_SHARE
    """The run stops (DecodeBudgetExceeded) when more of its (sample, band group) reads
    than this share failed: a damaged corpus is repaired, not trained on."""

    def loader_params(self, distributed: bool) -> LoaderParams:
        return replace(
            self.loader,
            seed=self.seed,
            drop_last=True,  # equal batch sizes keep the contrastive loss comparable
            equalize=distributed,  # DDP needs every rank to take the same number of steps
        )


@dataclass
class _Runtime:
    device: torch.device
    rank: int
    world_size: int
    distributed: bool
    autocast: bool


def _setup(settings: PretrainSettings) -> _Runtime:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = settings.device == "cuda" or (
        settings.device == "auto" and torch.cuda.is_available()
    )
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return _Runtime(device, rank, world_size, world_size > 1, autocast=want_cuda)


def _param_groups(model: nn.Module, optim: OptimParams) -> list[dict[str, Any]]:
    """Weight decay on every parameter (the reference's), or with decay_on "matrices"
    none on biases, norms and other vectors (the usual ViT recipe)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 or optim.decay_on == "all" else no_decay).append(p)
    weight_decay = optim.weight_decay
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def parameter_fingerprint(model: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal across DDP ranks iff replicas agree."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _primitive(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_primitive(v) for v in value]
    if isinstance(value, dict):
        return {k: _primitive(v) for k, v in value.items()}
    return value


def checkpoint_settings(settings: PretrainSettings) -> dict[str, Any]:
    """The run's settings as a checkpoint records them: primitives only (weights_only
    loading), and of `storage_options`, which may hold credentials, only the keys."""
    return {
        k: sorted(v) if k == "storage_options" else _primitive(v)
        for k, v in asdict(settings).items()
    }


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines a crashed run wrote after its last checkpoint, so steps never repeat."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= last_step
    ]
    path.write_text("".join(f"{line}\n" for line in kept))


def plot_loss_curve(metrics_path: Path, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    # one panel per term: on a shared axis the small contrastive term pinned the range
    # near 0 and a 3.83 -> 3.50 drop of the total looked flat
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key in zip(axes, ("loss", "patch_discrimination", "contrastive"), strict=True):
        ax.plot(steps, [r[key] for r in rows], linewidth=0.8, color="0.6", label="per step")
        ax.plot(steps, _smoothed([r[key] for r in rows]), color="C0", label="moving mean")
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("optimizer step")
        ax.margins(x=0.01, y=0.08)  # the data's own range, never forced to start at 0
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    fig.suptitle("terracube Latent MIM pretraining")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def _smoothed(values: list[float], window: int = 25) -> list[float]:
    """Trailing moving mean over up to `window` steps."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


class _Trainer:
    def __init__(self, settings: PretrainSettings) -> None:
        self.settings = settings
        self.rt = _setup(settings)
        torch.manual_seed(settings.seed)
        self.model = LatentMIM(settings.model).to(self.rt.device)
        self.forward_model: nn.Module = self.model
        if settings.compile and self.rt.device.type == "cuda":
            # compiling a Module returns a Module (OptimizedModule); the stubs say any callable
            self.forward_model = cast(nn.Module, torch.compile(self.model))
        if self.rt.distributed:
            self.forward_model = DistributedDataParallel(
                self.forward_model,
                device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None,
                # modality-aware masking leaves some groups' patch embeddings unused in a step
                find_unused_parameters=True,
            )
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, settings.optim),
            lr=settings.optim.lr,
            betas=(settings.optim.beta1, settings.optim.beta2),
        )
        warmup = settings.optim.warmup_for(settings.steps)
        self.scheduler = warmup_cosine(
            self.optimizer, WarmupCosine(warmup, settings.steps, settings.optim.min_lr_ratio)
        )
        dataset = CorpusStream(
            settings.store,
            settings.loader_params(self.rt.distributed),
            storage_options=settings.storage_options or None,
        )
        self.loader = StreamingLoader(dataset, num_workers=settings.workers)
        self.groups = len(dataset.groups)
        epoch_reads = dataset.batches_in_epoch(0, settings.workers) * self.groups
        epoch_reads *= self.rt.world_size  # the budget judges the totals of every rank
        self.budget = DecodeBudget(
            settings.max_decode_error_share, epoch_reads * settings.loader.batch_size
        )
        self.step = 0
        self.warned_at = -(10**9)
        self.metrics_path = settings.out_dir / METRICS_FILE

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": rng_states(),
            "settings": checkpoint_settings(self.settings),
        }

    def save(self) -> Path | None:
        path = None
        if self.rt.rank == 0:
            path = save_checkpoint(
                self.settings.checkpoint_dir,
                self.step,
                self.state(),
                keep=self.settings.keep_checkpoints,
            )
        if self.rt.distributed:
            dist.barrier()
        return path

    def resume(self) -> None:
        path = latest_checkpoint(self.settings.checkpoint_dir)
        if path is None:
            return
        try:
            state = load_checkpoint(path, CHECKPOINT_FORMAT)
        except CheckpointError as exc:
            raise CheckpointError(
                f"cannot resume: {exc}. It is the newest checkpoint in {path.parent}; move it "
                "away to resume from the one before, or empty the folder to start over"
            ) from None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        restore_rng_states(state["rng"])
        self.step = int(state["step"])
        if self.rt.rank == 0:
            _truncate_metrics(self.metrics_path, self.step)
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ steps
    def _micro_step(self, item: LoaderItem, last: bool) -> dict[str, Any]:
        batch = item.to(self.rt.device)
        views = [v.to(self.rt.device) for v in item.views]
        sync: AbstractContextManager[Any]
        if self.rt.distributed and not last:
            assert isinstance(self.forward_model, DistributedDataParallel)  # see __init__
            sync = self.forward_model.no_sync()
        else:
            sync = _nullcontext()
        with sync:
            with torch.autocast(
                self.rt.device.type, dtype=torch.bfloat16, enabled=self.rt.autocast
            ):
                out = self.forward_model(batch, views)
            loss = out["loss"].float()
            (loss / self.settings.optim.accumulation).backward()
        return out

    def train_step(self, items: Iterator[LoaderItem]) -> dict[str, Any]:
        s = self.settings
        started = time.perf_counter()
        wait = 0.0
        keys = ("loss", "patch_discrimination", "contrastive")
        sums: dict[str, torch.Tensor] = {}  # device tensors: read once, after the step
        samples = errors = 0
        bad_shards: tuple[str, ...] = ()
        pooled = []
        encoded: tuple[torch.Tensor, torch.Tensor] | None = None  # first micro-batch's tokens
        for micro in range(s.optim.accumulation):
            t0 = time.perf_counter()
            item = next(items)
            wait += time.perf_counter() - t0
            out = self._micro_step(item, last=micro == s.optim.accumulation - 1)
            step_values = {k: out[k].detach().float() for k in keys}
            step_values["tokens"] = out["encoded_tokens"] + out["decoded_tokens"]
            for key, value in step_values.items():
                sums[key] = value if key not in sums else sums[key] + value
            samples += item.batch_size
            errors += item.decode_errors
            bad_shards += item.bad_shards
            pooled.append(out["pooled"].detach().float())
            if encoded is None:
                encoded = (out["encoded"], out["encoded_present"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.optim.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.model.update_target()  # an EMA target follows; the frozen ones do nothing
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        totals = {k: float(sums[k]) / s.optim.accumulation for k in keys}
        tokens = int(sums["tokens"])
        reads, lost = samples * self.groups, errors
        if self.rt.distributed:  # every rank judges the same totals, so all stop together
            shared = torch.tensor([totals["loss"], reads, lost], dtype=torch.float64)
            dist.all_reduce(shared)
            totals["loss_mean_ranks"] = float(shared[0]) / self.rt.world_size
            reads, lost = int(shared[1]), int(shared[2])
        for shard in self.budget.add(reads, lost, bad_shards):
            log.warning("damaged shard, its samples left out: %s", shard)
        elapsed = time.perf_counter() - started
        embeddings = torch.cat(pooled).cpu()
        row: dict[str, Any] = {
            "step": self.step,
            "epoch": self.loader.epoch,
            **totals,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": tokens,
            "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
            "samples": samples,
            "data_wait_s": wait,
            "step_s": elapsed,
            "decode_errors": errors,
        }
        if embeddings.shape[0] >= 2:
            row.update(collapse_report(embeddings))
        assert encoded is not None
        sample = encoded[0][encoded[1]][:1024].float().cpu()  # after the step: reads are free
        if sample.shape[0] >= 2:
            row.update(collapse_report(sample, prefix="token_"))
            warning = collapse_warning(row, self.step)
            if warning is not None and self.step - self.warned_at >= 100:
                self.warned_at = self.step
                log.warning(warning)
        return row

    def run(
        self, stop_after: int | None = None, on_step: Callable[[dict[str, Any]], None] | None = None
    ) -> Path:
        s = self.settings
        self.resume()
        if self.rt.rank == 0:
            s.out_dir.mkdir(parents=True, exist_ok=True)
        items = iter(self.loader)
        self.model.train()
        last_saved: Path | None = None
        target = s.steps if stop_after is None else min(s.steps, stop_after)
        while self.step < target:
            row = self.train_step(items)
            if self.rt.rank == 0:
                with self.metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if on_step is not None:
                    on_step(row | {"steps": target})
            if self.step % s.checkpoint_interval == 0 or self.step == target:
                last_saved = self.save()
        if last_saved is None:
            last_saved = latest_checkpoint(s.checkpoint_dir)
        self._summarise(last_saved)
        assert last_saved is not None or self.rt.rank != 0
        return last_saved if last_saved is not None else s.checkpoint_dir

    def _summarise(self, checkpoint: Path | None) -> None:
        fingerprint = parameter_fingerprint(self.model)
        fingerprints: list[str | None] = [fingerprint]  # all_gather_object fills in the Nones
        if self.rt.distributed:
            fingerprints = [None] * self.rt.world_size
            dist.all_gather_object(fingerprints, fingerprint)
        if self.rt.rank != 0:
            return
        if self.metrics_path.exists():
            plot_loss_curve(self.metrics_path, self.settings.out_dir / LOSS_CURVE_FILE)
        summary = {
            "step": self.step,
            "world_size": self.rt.world_size,
            "device": str(self.rt.device),
            "checkpoint": str(checkpoint) if checkpoint else None,
            "parameter_fingerprints": fingerprints,
            "replicas_identical": len(set(fingerprints)) == 1,
            "decode_errors": self.loader.decode_errors,
        }
        (self.settings.out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def train(
    settings: PretrainSettings,
    stop_after: int | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Run (or resume) pretraining; returns the newest checkpoint's path.

    `stop_after` ends this process at that step (with a checkpoint) as if it had
    been stopped there; the next call with the same settings resumes from it.
    `on_step` gets each step's metrics row (plus `steps`, the target) on rank 0.
    """
    trainer = _Trainer(settings)
    try:
        return trainer.run(stop_after, on_step)
    finally:
        if trainer.rt.distributed and dist.is_initialized():
            dist.destroy_process_group()
