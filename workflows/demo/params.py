"""What the demo runs and where it writes: presets per world size, the stage
parameters, and the one folder every stage writes under. Shared by the stages
(`run.py`) and the report (`report.py`), which both read these and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from terracube.workflows.world.crops import LABELS_DIR

STATE_FILE = "demo_state.json"
STATE_VERSION = 1
STAGES: tuple[str, ...] = (
    "world",
    "plan",
    "build",
    "stats",
    "pretrain",
    "evaluate",
    "embed",
    "report",
)
CLASSIFICATION = "worldcover-classification"
SEGMENTATION = "worldcover-segmentation"
CONTEXT = "raster-segmentation"
"""The context task: crop types from the world's label rasters (workflows/world/crops.py)."""
CONTEXT_LABELS = ("truth", LABELS_DIR)
"""Where the world keeps the context task's label rasters, under the world folder."""

Echo = Callable[[str], None]


class DemoError(RuntimeError):
    """A demo problem the user can act on (failed tiles, a folder holding another demo)."""


@dataclass(frozen=True)
class PretrainStage:
    """Pretraining knobs of the demo: a nano encoder trained briefly on CPU."""

    steps: int
    batch_size: int
    crop_sizes: tuple[int, ...]
    patch_sizes: tuple[int, ...]
    token_budget: int
    lr: float
    warmup_steps: int
    checkpoint_interval: int
    loader_workers: int = 0


@dataclass(frozen=True)
class EvalStage:
    """Evaluation knobs: crops and patch size of the WorldCover probes, seeded subsets."""

    patch_size: int
    crop: int
    max_crops_per_tile: int | None
    segmentation: bool
    batch_size: int = 32


@dataclass(frozen=True)
class DemoParams:
    """Everything that decides what the demo computes (stored in the state file)."""

    size: str
    pretrain: PretrainStage
    evaluation: EvalStage
    seed: int = 0
    build_workers: int = 2
    samples_per_shard: int = 4
    quicklooks: int = 3
    torch_threads: int = 1
    """Intra-op threads for pretraining and evaluation. One: on a small shared machine
    OpenMP threads that spin-wait for a busy core made a step 5-10x slower than one thread."""


PRESETS: dict[str, DemoParams] = {
    # The CI-sized run: 4 tiles x 3 months; every stage runs, none is meant to impress.
    "test": DemoParams(
        size="test",
        pretrain=PretrainStage(
            steps=12,
            batch_size=4,
            crop_sizes=(32,),
            patch_sizes=(8,),
            token_budget=512,
            lr=1e-3,
            warmup_steps=2,
            checkpoint_interval=6,
        ),
        evaluation=EvalStage(patch_size=8, crop=32, max_crops_per_tile=16, segmentation=True),
        samples_per_shard=2,
        quicklooks=2,
    ),
    # The README's `make demo`: 20 tiles x 12 months, tuned to stay under 15 min on 2 cores.
    "demo": DemoParams(
        size="demo",
        pretrain=PretrainStage(
            steps=150,
            batch_size=8,
            crop_sizes=(32,),
            patch_sizes=(8,),
            token_budget=384,
            lr=1e-3,
            warmup_steps=15,
            checkpoint_interval=50,
        ),
        evaluation=EvalStage(patch_size=8, crop=32, max_crops_per_tile=16, segmentation=False),
    ),
}


def eval_tasks(params: DemoParams) -> tuple[str, ...]:
    """The evaluations the demo runs, in report order."""
    if params.evaluation.segmentation:
        return (CLASSIFICATION, CONTEXT, SEGMENTATION)
    return (CLASSIFICATION, CONTEXT)


def demo_params(size: str) -> DemoParams:
    """The preset for a world size, with an error listing the valid names."""
    try:
        return PRESETS[size]
    except KeyError:
        raise ValueError(f"unknown demo size {size!r}; use one of: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class DemoPaths:
    """Where every stage writes, all under one folder."""

    root: Path

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def build_yaml(self) -> Path:
        return self.root / "build.yaml"

    @property
    def store(self) -> Path:
        return self.root / "corpus.zarr"

    @property
    def plan_summary(self) -> Path:
        return self.root / "plan_summary.json"

    @property
    def pretrain_yaml(self) -> Path:
        return self.root / "pretrain.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "pretrain" / "checkpoints"

    @property
    def pretrain_out(self) -> Path:
        return self.root / "pretrain" / "out"

    def eval_dir(self, task: str) -> Path:
        return self.root / "eval" / task

    @property
    def embeddings(self) -> Path:
        """`terracube embed` output of the newest checkpoint."""
        return self.root / "embeddings"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE
