"""`terracube demo`: world -> plan -> build -> stats -> pretrain -> evaluate -> embed -> report.

The whole pipeline on the embedded synthetic world, sized to finish on a laptop. Every
stage records its completion and timings in `DIR/demo_state.json`; running the demo again
skips what is finished and resumes what is not (a build shard by shard, pretraining from
its newest checkpoint). The report is rewritten on every run: it shows that run's timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from terracube.workflows.demo.params import (
    CONTEXT,
    CONTEXT_LABELS,
    STAGES,
    STATE_VERSION,
    DemoError,
    DemoParams,
    DemoPaths,
    Echo,
    demo_params,
    eval_tasks,
)
from terracube.workflows.demo.report import write_demo_report
from terracube.workflows.progress import StepProgress

# --------------------------------------------------------------------------- state


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, document: dict[str, Any]) -> None:
    """Atomic write: a crash never leaves a torn state or summary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)


@dataclass
class DemoState:
    """The state file: per stage whether it is complete, its timings and what it produced."""

    path: Path
    document: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, params: DemoParams) -> DemoState:
        wanted = asdict(params)
        if not path.is_file():
            return cls(path, {"version": STATE_VERSION, "params": wanted, "stages": {}, "runs": []})
        document = json.loads(path.read_text())
        if document.get("params") != json.loads(json.dumps(wanted)):
            raise DemoError(
                f"{path.parent} holds a demo made with other settings (size "
                f"{document.get('params', {}).get('size')!r}); use a new --out folder or the "
                "same --size"
            )
        return cls(path, document)

    def completed(self, stage: str) -> bool:
        return bool(self.document["stages"].get(stage, {}).get("completed"))

    def record(
        self, stage: str, seconds: float, cpu: float, skipped: bool, detail: dict[str, Any]
    ) -> None:
        """Mark `stage` complete; a skipped stage keeps the timings of the run that did it."""
        previous = self.document["stages"].get(stage, {})
        entry = {
            "completed": True,
            "skipped": skipped,
            "seconds": previous.get("seconds", round(seconds, 3)) if skipped else round(seconds, 3),
            "cpu_seconds": previous.get("cpu_seconds", round(cpu, 3)) if skipped else round(cpu, 3),
            "last_run_seconds": round(seconds, 3),
            "finished_at": previous.get("finished_at", _now()) if skipped else _now(),
            "detail": detail or previous.get("detail", {}),
        }
        self.document["stages"][stage] = entry
        self.save()

    def invalidate(self, *stages: str) -> None:
        """Stages whose inputs changed must run again."""
        for stage in stages:
            self.document["stages"].pop(stage, None)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(self.path, self.document)


@dataclass(frozen=True)
class StageOutcome:
    skipped: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoResult:
    root: Path
    report: Path
    state: dict[str, Any]


# --------------------------------------------------------------------------- stages


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class DemoRun:
    paths: DemoPaths
    params: DemoParams
    state: DemoState
    echo: Echo
    progress: bool


def stage_world(run: DemoRun) -> StageOutcome:
    """Generate the synthetic world; `build.yaml` is written last, so it marks a whole world."""
    from terracube.workflows.world import generate_world

    world = run.paths.world
    if (world / "build.yaml").is_file():
        return StageOutcome(True)
    if world.exists():
        # A world interrupted half-way; it is the demo's own folder, so start it again.
        shutil.rmtree(world)
    run.state.invalidate(*STAGES[1:])
    manifest = generate_world(world, seed=run.params.seed, size=run.params.size)  # type: ignore[arg-type]
    return StageOutcome(
        False, {"tiles": len(manifest.tile_ids), "periods": len(manifest.period_starts)}
    )


def write_build_config(paths: DemoPaths, params: DemoParams) -> Path:
    """The world's build.yaml with absolute inputs, the store in the demo folder and the
    demo's shard size (so the LocalCluster has one shard per worker to build)."""
    document = yaml.safe_load((paths.world / "build.yaml").read_text())
    for source in document["modalities"].values():
        for key in ("catalog", "path"):
            if key in source:
                source[key] = str((paths.world / source[key]).resolve())
    document["output"] = {"store": str(paths.store), "samples_per_shard": params.samples_per_shard}
    document["cluster"] = {"workers": params.build_workers}
    text = yaml.safe_dump(document, sort_keys=False)
    if not paths.build_yaml.is_file() or paths.build_yaml.read_text() != text:
        paths.build_yaml.write_text(text)
    return paths.build_yaml


def stage_plan(run: DemoRun) -> StageOutcome:
    """Search the world's static catalog and keep the plan tables and the dry-run summary."""
    from terracube.catalog.plan_store import PlanFormatError, read_meta
    from terracube.catalog.plan_summary import summarize
    from terracube.workflows.build.runner import make_and_save_plan, plan_dir
    from terracube.workflows.config import load_config

    config = load_config(write_build_config(run.paths, run.params))
    saved = plan_dir(config) / "config.json"
    if run.state.completed("plan") and run.paths.plan_summary.is_file() and saved.is_file():
        try:
            read_meta(plan_dir(config))  # a plan saved by an older terracube is made again
            return StageOutcome(True)
        except (PlanFormatError, FileNotFoundError):
            run.echo("  the saved plan is of an older format: planning again")
    summary = summarize(make_and_save_plan(config))
    _write_json(run.paths.plan_summary, summary)
    return StageOutcome(
        False,
        {
            "tiles": summary["tiles"],
            "items": summary["items_total"],
            "plan": str(plan_dir(config)),
        },
    )


def stage_build(run: DemoRun) -> StageOutcome:
    """Build (or resume) the corpus on a LocalCluster; failed tiles stop the demo."""
    from terracube.workflows.build.runner import BuildOptions, build_corpus
    from terracube.workflows.build.status import corpus_status
    from terracube.workflows.config import load_config

    config = load_config(run.paths.build_yaml)
    done_before = run.state.completed("build") and run.paths.store.exists()
    if done_before and corpus_status(str(run.paths.store))["complete"]:
        return StageOutcome(True)
    report = build_corpus(
        config,
        BuildOptions(workers=run.params.build_workers, show_progress=run.progress),
    )
    if report.failures or report.shard_errors:
        raise DemoError(
            f"the build left {report.failures} failed (tile, modality) and "
            f"{report.shard_errors} failed shard task(s); see {report.run_dir / 'failures.json'} "
            f"and {report.log}. Retry with `terracube build {run.paths.build_yaml} "
            "--retry-failed`, then run the demo again"
        )
    run.state.invalidate("stats", "pretrain", "evaluate", "embed")
    return StageOutcome(
        False,
        {
            "tiles": report.tiles,
            "shards_submitted": report.shards_submitted,
            "shards": report.shards,
            "tiles_per_minute": round(report.tiles_per_minute, 2),
            "log": str(report.log),
        },
    )


def stage_stats(run: DemoRun) -> StageOutcome:
    """Normalisation statistics into the store (the loader and the probes read them)."""
    from terracube.model.data.pixel_stats import read_stats, stats_command
    from terracube.pipeline.corpus.store import Corpus

    if run.state.completed("stats") and read_stats(Corpus.open(run.paths.store)) is not None:
        return StageOutcome(True)
    stats = stats_command(run.paths.store)
    return StageOutcome(False, {"groups": sorted(stats["groups"])})


_STEP = re.compile(r"step_(\d+)\.pt")


def write_pretrain_config(paths: DemoPaths, params: DemoParams) -> Path:
    p = params.pretrain
    document = {
        "data": {
            "store": str(paths.store),
            "batch_size": p.batch_size,
            "crop_sizes": list(p.crop_sizes),
            "patch_sizes": list(p.patch_sizes),
            "token_budget": p.token_budget,
            "shuffle_buffer": 16,
            "workers": p.loader_workers,
        },
        "model_size": "nano",
        "steps": p.steps,
        "optim": {"lr": p.lr, "warmup_steps": p.warmup_steps},
        "checkpoint": {"dir": str(paths.checkpoints), "interval": p.checkpoint_interval},
        "out_dir": str(paths.pretrain_out),
        "seed": params.seed,
        "device": "cpu",
    }
    paths.pretrain_yaml.write_text(yaml.safe_dump(document, sort_keys=False))
    return paths.pretrain_yaml


def latest_step(paths: DemoPaths) -> tuple[Path | None, int]:
    """Newest checkpoint and its step (0 when there is none)."""
    from terracube.model.train.checkpoint import latest_checkpoint

    newest = latest_checkpoint(paths.checkpoints)
    if newest is None:
        return None, 0
    match = _STEP.fullmatch(newest.name)
    return newest, int(match.group(1)) if match else 0


def stage_pretrain(run: DemoRun) -> StageOutcome:
    """Pretrain the nano encoder; resumes from its newest checkpoint, skips when finished."""
    from terracube.model.train.pretrain import LOSS_CURVE_FILE
    from terracube.workflows.pretrain_config import run_pretrain

    config = write_pretrain_config(run.paths, run.params)
    _, step = latest_step(run.paths)
    finished = step >= run.params.pretrain.steps
    if finished and (run.paths.pretrain_out / LOSS_CURVE_FILE).is_file():
        return StageOutcome(True)
    if step:
        run.echo(f"  resuming pretraining from step {step}")
    steps = run.params.pretrain.steps
    progress = StepProgress("  pretrain", steps, "steps") if run.progress else None

    def on_step(row: dict[str, Any]) -> None:
        if progress is not None:
            progress.update(row["step"], f"loss {row['loss']:.3f}")

    try:
        with torch_threads(run.params.torch_threads):
            checkpoint = run_pretrain(config, on_step=on_step)
    finally:
        if progress is not None:
            progress.close()
    run.state.invalidate("evaluate", "embed")
    rows = [
        json.loads(line)
        for line in (run.paths.pretrain_out / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return StageOutcome(
        False,
        {
            "checkpoint": str(checkpoint),
            "resumed_from_step": step,
            "steps": rows[-1]["step"],
            "first_loss": rows[0]["loss"],
            "last_loss": rows[-1]["loss"],
        },
    )


def stage_evaluate(run: DemoRun) -> StageOutcome:
    """Both probe protocols of trained vs random-init vs raw pixels, with intervals, per task:
    WorldCover, and the context task (crop types told apart only by their season)."""
    from terracube.model.eval.evaluate import EvalParams, evaluate
    from terracube.model.eval.report import RESULTS_JSON
    from terracube.model.eval.tasks import CropParams

    checkpoint, _ = latest_step(run.paths)
    if checkpoint is None:
        raise DemoError(f"no pretraining checkpoint in {run.paths.checkpoints}; run the demo again")
    e = run.params.evaluation
    params = EvalParams(
        seed=run.params.seed,
        patch_size=e.patch_size,
        batch_size=e.batch_size,
        crop=CropParams(crop=e.crop, max_crops_per_tile=e.max_crops_per_tile, seed=run.params.seed),
    )
    skipped, detail = True, {}
    for task in eval_tasks(run.params):
        out = run.paths.eval_dir(task)
        existing = out / RESULTS_JSON
        done_before = run.state.completed("evaluate") and existing.is_file()
        if done_before and json.loads(existing.read_text())["checkpoint"] == str(checkpoint):
            continue
        skipped = False
        task_params = params
        if task == CONTEXT:  # every crop (more test patches), labels from the world's truth
            labels, crops = (
                run.paths.world.joinpath(*CONTEXT_LABELS),
                replace(params.crop, max_crops_per_tile=None),
            )
            task_params = replace(params, labels=str(labels), crop=crops)
        with torch_threads(run.params.torch_threads):
            results = evaluate(checkpoint, task, run.paths.store, out, task_params)
        detail[task] = {"n_train": results["n_train"], "n_test": results["n_test"]}
    return StageOutcome(skipped, detail)


def stage_embed(run: DemoRun) -> StageOutcome:
    """Export the newest checkpoint's embeddings of every tile (resumes; redone for a new
    checkpoint)."""
    import shutil

    from terracube.model.embed.spec import EmbedSpec, file_sha256
    from terracube.model.embed.store import PROVENANCE_ATTR, STORE_NAME
    from terracube.workflows.embed import run_embed

    checkpoint, _ = latest_step(run.paths)
    if checkpoint is None:
        raise DemoError(f"no pretraining checkpoint in {run.paths.checkpoints}; run the demo again")
    out, sha = run.paths.embeddings, file_sha256(checkpoint)
    made = out / STORE_NAME / "zarr.json"
    if made.is_file():
        attrs = json.loads(made.read_text()).get("attributes", {})
        if attrs.get(PROVENANCE_ATTR, {}).get("checkpoint", {}).get("sha256") != sha:
            shutil.rmtree(out)  # another checkpoint's embeddings: this one's replace them
    spec = EmbedSpec(str(checkpoint), str(run.paths.store), str(out), device="cpu")
    with torch_threads(run.params.torch_threads):
        report = run_embed(spec, progress=run.progress)
    if report.failed or report.table is None:
        raise DemoError(
            f"the embedding export failed ({'; '.join(report.failed) or 'unfinished shards'}); "
            "run the demo again"
        )
    if report.shards_run == 0:
        return StageOutcome(True)
    return StageOutcome(
        False, {"tiles": report.samples_done, "shards_run": report.shards_run, "out": str(out)}
    )


def stage_report(run: DemoRun) -> StageOutcome:

    index = write_demo_report(run.paths, run.state.document, eval_tasks(run.params), run.params)
    return StageOutcome(False, {"index": str(index)})


STAGE_FUNCTIONS: dict[str, Callable[[DemoRun], StageOutcome]] = {
    "world": stage_world,
    "plan": stage_plan,
    "build": stage_build,
    "stats": stage_stats,
    "pretrain": stage_pretrain,
    "evaluate": stage_evaluate,
    "embed": stage_embed,
    "report": stage_report,
}


def run_demo(
    out: str | os.PathLike[str],
    size: str = "demo",
    params: DemoParams | None = None,
    echo: Echo = print,
    progress: bool = False,
) -> DemoResult:
    """Run (or resume) the demo in `out`; returns where the report is."""
    params = params or demo_params(size)
    paths = DemoPaths(Path(out).resolve())
    check_demo_folder(paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    state = DemoState.open(paths.state, params)
    state.save()  # first, so a first run cut off in its first stage is still the demo's own
    run = DemoRun(paths, params, state, echo, progress)
    started = time.monotonic()
    for name in STAGES:
        if name == "report":
            # the report shows this run's timings, so the total is recorded first
            state.document["last_run"] = {"finished_at": _now(), "seconds": _since(started)}
        t0, cpu0 = time.monotonic(), cpu_seconds()
        outcome = STAGE_FUNCTIONS[name](run)
        seconds = time.monotonic() - t0
        state.record(name, seconds, cpu_seconds() - cpu0, outcome.skipped, outcome.detail)
        echo(
            f"{name:<9} {'skipped (already done)' if outcome.skipped else 'done'} in {seconds:.1f} s"
        )
    state.document["last_run"] = {
        "finished_at": _now(),
        "seconds": _since(started),
        "peak_rss_mb": peak_rss_mb(),
    }
    state.document["runs"].append(
        {
            **state.document["last_run"],
            "skipped": [n for n in STAGES if state.document["stages"][n]["skipped"]],
        }
    )
    state.save()
    return DemoResult(paths.root, paths.report / "index.html", state.document)


def check_demo_folder(paths: DemoPaths) -> None:
    """The demo writes only into a new or empty folder, or one an earlier demo made (it has
    `demo_state.json`): run on `terracube world --out w`, it used to rewrite `w/build.yaml`
    and then refuse the user's own corpus."""
    root = paths.root
    if root.exists() and not root.is_dir():
        raise DemoError(f"--out {root} is a file; pass a new or empty folder")
    if not root.is_dir() or paths.state.is_file():
        return
    foreign = sorted(p.name for p in root.iterdir())
    if foreign:
        shown = ", ".join(foreign[:4]) + (" ..." if len(foreign) > 4 else "")
        raise DemoError(
            f"--out {root} already holds files the demo did not write ({shown}); it never "
            f"touches them: pass a new or empty folder, e.g. --out {root / 'demo'}"
        )


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the build's worker processes
    are reaped when the LocalCluster closes): on a shared machine, the honest cost."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mb() -> float:
    """The larger peak resident set of this process and of its largest finished child
    (a build worker), in MB (Linux reports kB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
