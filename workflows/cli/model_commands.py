"""The model-side `terracube` commands: stats, pretrain, evaluate, embed, model-info, demo.

A sub-app the main app merges in (`app.add_typer(model_app)` in app.py), so this module never imports app.py.
Like the data commands, a problem the user can fix prints one `error:` line and
exits with status 2, without a traceback; heavy imports stay inside the commands.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from terracube.workflows.cli.common import (
    EXIT_BUILD_FAILURES,
    JsonOption,
    StoreArg,
    store_and_options,
    user_errors,
)
from terracube.workflows.progress import PLAIN_EVERY_S

model_app = typer.Typer()


def model_errors(
    *fixable: type[Exception], interrupted: str = "interrupted"
) -> contextlib.AbstractContextManager[None]:
    """The CLI's error policy (`common.user_errors`) with `fixable` as user errors too."""
    return user_errors(*fixable, interrupted=interrupted)


@model_app.command()
def stats(store: StoreArg) -> None:
    """Compute the corpus' normalisation statistics and store them in it.

    Per band group and band: count, mean and std of the valid pixels (done samples,
    present timesteps, not nodata) in storage units, written to the store's root
    attributes (`terracube:stats`); the loader and the probes prefer them over the
    registry defaults. Run it after `terracube build`, before `terracube pretrain`.
    """
    from terracube.model.data.pixel_stats import stats_command

    with model_errors(ValueError):
        url, options = store_and_options(store)
        result = stats_command(url, options or None)
    typer.echo(f"statistics stored in {url}")
    typer.echo(f"{'group':<11}{'band':<7}{'valid pixels':>14}{'mean':>12}{'std':>12}")
    for name, group in result["groups"].items():
        for band, count, mean, std in zip(
            group["bands"], group["count"], group["mean"], group["std"], strict=True
        ):
            typer.echo(f"{name:<11}{band:<7}{count:>14}{mean:>12.2f}{std:>12.2f}")


@model_app.command()
def pretrain(
    config: Annotated[
        Path,
        typer.Argument(
            help="Pretraining config (YAML: data, model_size, steps, optim, ...).",
            show_default=False,
            metavar="CONFIG",
        ),
    ],
    every: Annotated[
        float,
        typer.Option(
            "--progress-every", min=0, help="Seconds between progress lines when not on a terminal."
        ),
    ] = PLAIN_EVERY_S,
) -> None:
    """Pretrain (or resume) an encoder on a built corpus with Latent MIM.

    Resumes from the newest checkpoint in the config's checkpoint.dir. Writes
    checkpoints there and metrics.jsonl, loss_curve.png and summary.json into
    out_dir. On several processes: `torchrun --nproc_per_node N $(which terracube)
    pretrain CONFIG`.
    """
    from terracube.model.data.read_faults import CorpusTooSmall, DecodeBudgetExceeded
    from terracube.model.train.checkpoint import CheckpointError
    from terracube.workflows.pretrain_config import (
        PretrainConfigError,
        load_pretrain_config,
        run_pretrain,
    )
    from terracube.workflows.progress import StepProgress

    with model_errors(
        PretrainConfigError,
        CheckpointError,
        CorpusTooSmall,
        DecodeBudgetExceeded,
        RuntimeError,
        interrupted="interrupted: the newest checkpoint in the config's checkpoint.dir is "
        "kept; run the same command again to resume from it",
    ):
        settings = load_pretrain_config(config)
        rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 reports steps
        progress = StepProgress("pretrain", settings.steps if rank == 0 else 0, every_s=every)

        def on_step(row: dict[str, Any]) -> None:
            progress.update(row["step"], f"loss {row['loss']:.3f}")

        try:
            checkpoint = run_pretrain(settings, on_step=on_step)
        finally:
            progress.close()
    out = settings.out_dir
    typer.echo(
        f"checkpoint: {checkpoint}\nmetrics: {out / 'metrics.jsonl'}\n"
        f"loss curve: {out / 'loss_curve.png'}\n"
        f"next: terracube evaluate {checkpoint} --task worldcover-classification "
        f"--data {settings.data.store} --out EVAL_DIR"
    )


@model_app.command()
def evaluate(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="Pretraining checkpoint (step_*.pt), or 'none' to score a random-init encoder.",
            show_default=False,
        ),
    ],
    task: Annotated[
        str,
        typer.Option(
            help="worldcover-classification, worldcover-segmentation, raster-classification, "
            "raster-segmentation (labels from --labels), eurosat or bigearthnet."
        ),
    ],
    data: Annotated[str, typer.Option(help="Corpus store (corpus tasks) or dataset folder.")],
    out: Annotated[Path, typer.Option(help="Folder for results.json, results.md and PNGs.")],
    patch_size: Annotated[
        int | None,
        typer.Option(help="Encoder patch size 1-8 (default: the checkpoint's; 4 for 'none')."),
    ] = None,
    crop: Annotated[int, typer.Option(help="Corpus tasks: crop edge in 10 m pixels.")] = 32,
    labels: Annotated[
        Path | None,
        typer.Option(help="raster-* tasks: folder of label GeoTIFFs (10 m, one per UTM zone)."),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Resamples of the 95 % intervals (0: none).")
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Split and probe seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    as_json: JsonOption = False,
    every: Annotated[
        float,
        typer.Option(
            "--progress-every", min=0, help="Seconds between progress lines when not on a terminal."
        ),
    ] = PLAIN_EVERY_S,
) -> None:
    """Probe a frozen encoder next to random-init and raw-pixel baselines, with both probe
    protocols (olmoearth: kNN k=20 + linear; geobench: kNN k=5 + logistic regression) and
    95 % bootstrap intervals.

    Writes results.json, results.md and (single-label tasks) confusion_matrix.png
    into OUT and prints the results table (--json: the results as one JSON object).
    """
    import json

    from terracube.catalog.registry import band_group
    from terracube.model.eval.evaluate import TASKS, EvalParams
    from terracube.model.eval.evaluate import evaluate as run_evaluation
    from terracube.model.eval.report import markdown_table
    from terracube.model.eval.tasks import CropParams, crop_windows
    from terracube.model.train.checkpoint import CheckpointError
    from terracube.workflows.progress import StepProgress

    with model_errors(CheckpointError, ValueError, KeyError, RuntimeError):
        if task not in TASKS:
            raise ValueError(f"--task {task!r} is unknown; choose one of: {', '.join(TASKS)}")
        if patch_size is not None and not 1 <= patch_size <= 8:
            raise ValueError(f"--patch-size {patch_size}: FlexiViT patch sizes are 1..8")
        if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
            raise ValueError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")
        path = None if checkpoint.lower() == "none" else Path(checkpoint)
        if path is not None and not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} does not exist; pass a step_*.pt file or 'none'"
            )
        if "://" not in data and not Path(data).exists():
            raise FileNotFoundError(f"--data {data} does not exist; pass a corpus store or folder")
        crop_params = CropParams(crop=crop, seed=seed)
        if task.startswith(("worldcover", "raster")):
            crop_windows(band_group("worldcover").pixels, crop_params)  # checks --crop first
        if labels is not None and not labels.exists():
            raise FileNotFoundError(f"--labels {labels} does not exist; pass a folder of GeoTIFFs")
        params = EvalParams(
            patch_size=patch_size,
            seed=seed,
            device=device,
            crop=crop_params,
            labels=None if labels is None else str(labels),
            bootstrap=bootstrap,
        )
        bars: dict[str, StepProgress] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                for bar in bars.values():
                    bar.close()
                unit = "samples" if stage == "features" else "feature sets"
                bars[stage] = StepProgress(f"evaluate {stage}", total, unit, every_s=every)
            bars[stage].update(done)

        try:
            results = run_evaluation(path, task, data, out, params, progress=progress)
        finally:
            for bar in bars.values():
                bar.close()
    if as_json:
        typer.echo(json.dumps(results))
        return
    sys.stdout.write(markdown_table(results))
    typer.echo(f"results: {out / 'results.json'}")


def _periods(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(
            f"--periods {text!r}: give START:STOP corpus period indexes, e.g. 0:6"
        ) from None
    return start, stop


@model_app.command()
def embed(
    checkpoint: Annotated[
        str, typer.Argument(help="Pretraining checkpoint (step_*.pt).", show_default=False)
    ],
    data: Annotated[
        str,
        typer.Option(help="Corpus store, or a build config (.yaml): its corpus is built first."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for embeddings.zarr and tiles.parquet.")],
    patch_size: Annotated[
        int | None, typer.Option(min=1, help="Encoder patch size (default: the checkpoint's).")
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(
            min=4, help="Inference window in 10 m px (default: the largest training crop)."
        ),
    ] = None,
    periods: Annotated[
        str | None, typer.Option(help="START:STOP corpus periods to encode (default: all).")
    ] = None,
    groups: Annotated[
        str | None, typer.Option(help="Comma-separated input band groups (default: all).")
    ] = None,
    stats_from: Annotated[
        str | None,
        typer.Option(help="Corpus whose normalisation statistics to use (e.g. the training one)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto (a GPU when present), cpu or cuda[:N].")] = (
        "auto"
    ),
    tiles_per_read: Annotated[int, typer.Option(min=1, help="Tiles read per batch.")] = 4,
    windows_per_step: Annotated[
        int, typer.Option(min=1, help="Windows through the encoder at once.")
    ] = 16,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address: one task per corpus shard.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Run on a new LocalCluster of this many workers.")
    ] = None,
    allow_pending: Annotated[
        bool,
        typer.Option("--allow-pending", help="Embed a corpus whose inputs are still building."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Export embeddings: per-patch maps (Zarr, on the corpus grid) and pooled tiles (GeoParquet).

    Writes OUT/embeddings.zarr (dims sample, y, x, dim; per-sample CRS and transform) and
    OUT/tiles.parquet (one row per tile, lon/lat geometry), both with their provenance.
    Re-running the same command computes only the shards still missing (docs/embeddings.md).
    """
    import json

    from terracube.model.embed.spec import EmbedError, EmbedSpec
    from terracube.model.train.checkpoint import CheckpointError
    from terracube.workflows.embed import run_embed

    with model_errors(EmbedError, CheckpointError, ValueError, KeyError, RuntimeError):
        if scheduler and workers:
            raise ValueError("--scheduler runs on that cluster's workers: drop --workers")
        if "://" not in data and not Path(data).exists():
            raise FileNotFoundError(f"--data {data} does not exist; pass a corpus or build config")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; pass a folder (it is created if absent)")

        def absolute(path: str) -> str:
            return path if "://" in path else str(Path(path).resolve())

        spec = EmbedSpec(
            checkpoint=absolute(checkpoint),
            data=absolute(data),
            out=str(out.resolve()),
            patch_size=patch_size,
            window=window,
            periods=_periods(periods),
            groups=None if groups is None else tuple(g.strip() for g in groups.split(",")),
            tiles_per_read=tiles_per_read,
            windows_per_step=windows_per_step,
            device=device,
            stats_from=None if stats_from is None else absolute(stats_from),
            allow_pending=allow_pending,
        )
        report = run_embed(spec, scheduler, workers, progress=progress and not as_json)
    summary = {
        "out": str(report.out),
        "store": str(report.store),
        "table": None if report.table is None else str(report.table),
        "shards_total": report.shards_total,
        "shards_run": report.shards_run,
        "shards_already_done": report.shards_skipped,
        "samples_done": report.samples_done,
        "samples_empty": report.samples_empty,
        "seconds": round(report.seconds, 3),
        "failed": list(report.failed),
        "normalisation": report.provenance["normalisation"],
        "patch_size": report.provenance["patch_size"],
        "window": report.provenance["window"],
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"embedded {report.shards_run} shard(s) ({report.samples_done} tiles, "
            f"{report.samples_empty} without input; {report.shards_skipped} of "
            f"{report.shards_total} shards were already done) in "
            f"{report.seconds:.1f} s; patch {summary['patch_size']}, window "
            f"{summary['window']} px, normalised with {summary['normalisation']}"
        )
        typer.echo(f"maps:  {report.store}")
        waiting = (
            "not written: some shards failed (below); rerun after the repair"
            if report.failed
            else "not yet (other torchrun ranks' shards are still running)"
        )
        typer.echo(f"tiles: {report.table or waiting}")
        if report.pending_inputs:
            typer.echo(
                f"warning: {report.pending_inputs} sample(s) had inputs still pending "
                "(counted as missing)",
                err=True,
            )
    for line in report.failed:
        typer.echo(f"error: {line}", err=True)
    if report.failed:
        raise typer.Exit(EXIT_BUILD_FAILURES)


@model_app.command("model-info")
def model_info(
    size: Annotated[str, typer.Option(help="Model size: nano, tiny, base or large.")] = "nano",
    config: Annotated[
        Path | None,
        typer.Option(help="A pretraining YAML whose model: and masking: sections to report."),
    ] = None,
    samples: Annotated[
        int, typer.Option(help="Synthetic samples to measure the masking fractions on.")
    ] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Parameter counts, depths, drop path, the recipe's options, and the measured share of
    tokens encoded and decoded under its masking (docs/model.md has the parity table)."""
    import dataclasses
    import json

    from terracube.model.nn.encoder import SIZES
    from terracube.model.nn.olmoearth import LatentMIMConfig
    from terracube.model.train.masking import MaskingParams
    from terracube.model.train.recipe_info import format_info
    from terracube.model.train.recipe_info import model_info as describe

    with model_errors(ValueError):
        if size not in SIZES:
            raise ValueError(f"--size {size!r} is unknown; choose one of: {', '.join(SIZES)}")
        if samples < 2:
            raise ValueError(f"--samples {samples}: measure on at least 2 samples")
        recipe, masking = LatentMIMConfig(size=size), MaskingParams()
        if config is not None:
            from terracube.workflows.pretrain_config import load_pretrain_config

            settings = load_pretrain_config(config).settings()
            recipe = dataclasses.replace(settings.model, size=size)
            masking = settings.loader.masking
        info = describe(recipe, masking, samples)
    typer.echo(json.dumps(info) if as_json else format_info(info))


@model_app.command()
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the world, corpus, runs and report.")
    ] = Path("terracube-demo"),
    size: Annotated[
        str, typer.Option(help="'demo' (20 tiles x 12 months) or 'test' (tiny).")
    ] = "demo",
    progress: Annotated[bool, typer.Option(help="Show the build progress bar.")] = True,
) -> None:
    """Run the whole pipeline on the synthetic world and write a report.

    Stages: world -> plan -> build (Dask LocalCluster) -> stats -> pretrain (nano)
    -> evaluate (WorldCover probes) -> embed (embedding maps) -> report.

    Re-running the same command skips finished stages and resumes unfinished ones
    (state in OUT/demo_state.json). The report is OUT/report/index.html (and index.md).
    """
    from terracube.workflows.demo.params import DemoError, demo_params
    from terracube.workflows.demo.run import run_demo

    with model_errors(DemoError):
        try:
            params = demo_params(size)
        except ValueError as exc:
            raise DemoError(str(exc)) from None
        result = run_demo(out, params=params, echo=typer.echo, progress=progress)
    typer.echo(f"report: {result.report}\n        {result.report.with_suffix('.md')}")
