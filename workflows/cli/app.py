"""The `terracube` command line: world -> plan -> build -> status / validate.

Every command states what it reads and what it writes. Errors a user can fix (a bad
config, an unreadable store, a catalog that cannot be searched) print one message
and exit non-zero, without a traceback. Heavy imports happen inside the commands so
that `terracube --help` is instant. Later stages add their commands (stats,
pretrain, evaluate, demo) live in `model_commands.py` on a sub-app merged in at the end.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from terracube.workflows.cli.common import (
    EXIT_BUILD_FAILURES,
    EXIT_PROBLEMS,
    EXIT_USER_ERROR,
    JsonOption,
    StoreArg,
    UserError,
    set_debug,
    store_and_options,
    user_errors,
)
from terracube.workflows.cli.model_commands import model_app

if TYPE_CHECKING:
    from terracube.workflows.build.runner import BuildOptions, BuildReport
    from terracube.workflows.config import BuildConfig

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help=(
        "terracube: Earth-observation corpora and pretraining.\n\n"
        "Typical run: `terracube world --out w` (synthetic data), "
        "`terracube plan w/build.yaml --dry-run`, `terracube build w/build.yaml`, "
        "`terracube status w/corpus.zarr`, `terracube quicklook w/corpus.zarr 0 --out s0.png`."
    ),
)

ConfigArg = Annotated[
    Path,
    typer.Argument(
        help="Build config (YAML; see workflows/examples/).", show_default=False, metavar="CONFIG"
    ),
]


SchedulerOption = Annotated[
    str | None,
    typer.Option(help="Address of a running Dask scheduler (tcp://host:8786) to build on."),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(min=1, help="Workers of the LocalCluster started for this run (default: cores)."),
]


def _installed_version() -> str:
    from importlib.metadata import version as _v

    return _v("terracube")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"terracube {_installed_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of any error (for bug reports).")
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    # no docstring: the app's help above is what `terracube --help` shows
    set_debug(debug)


@app.command()
def version() -> None:
    """Print the installed terracube version."""
    typer.echo(_installed_version())


@app.command()
def world(
    out: Annotated[Path, typer.Option(help="New or empty folder to write the world into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same world.")] = 0,
    size: Annotated[str, typer.Option(help="'test' (4 tiles, 3 months) or 'demo'.")] = "test",
) -> None:
    """Write the synthetic world (COGs, STAC, OSM, truth, build.yaml) into OUT.

    Then build it: `terracube build OUT/build.yaml`.
    """
    from terracube.workflows.world import generate_world

    with user_errors(ValueError):
        manifest = generate_world(out, seed=seed, size=size)  # type: ignore[arg-type]
    typer.echo(
        f"world ({manifest.size}, seed {manifest.seed}): {len(manifest.tile_ids)} tiles in "
        f"{manifest.root}\nnext: terracube build {manifest.build_yaml}"
    )


@app.command()
def plan(
    config: ConfigArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Search and summarise only; write nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    allow_empty: Annotated[
        bool,
        typer.Option("--allow-empty", help="Exit 0 even when a modality has no data anywhere."),
    ] = False,
) -> None:
    """Search the catalogs and plan which items feed which tile and period.

    Prints tiles, items, estimated bytes and requests, and the tiles without data per
    modality, and the items set aside counted by reason. Without --dry-run the plan
    tables (GeoParquet) are written to `<store>.run/plan/` beside a local store (else
    `<config dir>/<name>.run/plan/`), where `terracube build` picks them up. A modality
    with no data in any tile is an error (exit 2) unless --allow-empty.
    """
    from terracube.catalog.plan_summary import (
        empty_plan_message,
        modalities_without_data,
        print_summary,
    )
    from terracube.workflows.build.runner import make_and_save_plan, plan_dir
    from terracube.workflows.config import load_config
    from terracube.workflows.planning import dry_run_estimate, plan_build, print_estimate
    from terracube.workflows.progress import StagesProgress

    with user_errors():
        cfg = load_config(config)
        estimate = dry_run_estimate(cfg) if dry_run else None
        if estimate is not None:
            if as_json:
                typer.echo(json.dumps(estimate, indent=2))
            else:
                print_estimate(estimate, sys.stdout)
            return
        # progress on stderr for long plans only: 200 searches or 5,000 tiles and more
        shown = StagesProgress(sys.stderr, min_searches=200, min_tiles=5000)
        if dry_run:
            result = plan_build(cfg, progress=shown)
        else:
            result = make_and_save_plan(cfg, progress=shown)
    print_summary(result, as_json=as_json, stream=sys.stdout)
    if not dry_run and not as_json:
        typer.echo(f"plan written to {plan_dir(cfg)}")
    empty = modalities_without_data(result)
    if empty:
        label = "warning" if allow_empty else "error"
        typer.echo(f"{label}: {empty_plan_message(result, empty)}", err=True)
        if not allow_empty:
            raise typer.Exit(EXIT_USER_ERROR)


def _build_options(
    cfg: BuildConfig,
    scheduler: str | None,
    workers: int | None,
    synchronous: bool,
    progress: bool,
) -> BuildOptions:
    """Where to run a build or repair; the flags win over the config's `cluster:`, and a
    clash is named by where each side came from."""
    from terracube.workflows.build.runner import BuildOptions

    chosen = scheduler or cfg.cluster.scheduler or None
    local = workers if workers is not None else cfg.cluster.workers
    if chosen and (local is not None or synchronous):
        said = "--scheduler" if scheduler else "cluster.scheduler in the config"
        other = (
            "--synchronous"
            if synchronous
            else "--workers"
            if workers is not None
            else "cluster.workers in the config"
        )
        raise UserError(
            f"{said} ({chosen}) runs on that cluster's own workers, but {other} asks for a "
            f"local one: drop one of the two"
        )
    return BuildOptions(
        scheduler=chosen, workers=local, synchronous=synchronous, show_progress=progress
    )


@app.command()
def build(
    config: ConfigArg,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Also rebuild tiles whose modality failed.")
    ] = False,
    synchronous: Annotated[
        bool,
        typer.Option("--synchronous", help="Build in this process without Dask (reference path)."),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    allow_empty: Annotated[
        bool,
        typer.Option("--allow-empty", help="Build even when a modality has no data anywhere."),
    ] = False,
) -> None:
    """Build (or resume) the corpus of CONFIG: one Dask task per corpus shard.

    Re-running the same command skips finished samples and never rewrites a
    finished shard. Writes the store named in the config, plus `<store>.run/` with the plan,
    a JSON-lines run log and failures.json (tile, modality, error, attempts).
    Exit status 0 when every tile is done or empty, 3 when some failed, 2 (before
    anything is written) when a modality has no data in any tile, unless --allow-empty.
    """
    from terracube.workflows.build.runner import build_corpus
    from terracube.workflows.config import load_config

    with user_errors():
        cfg = load_config(config)
        options = _build_options(cfg, scheduler, workers, synchronous, progress)
        options = dataclasses.replace(options, retry_failed=retry_failed, allow_empty=allow_empty)
        report = build_corpus(cfg, options)
        _say_build(report, retried=retry_failed)
        if report.shards_submitted == 0:
            _say_damage(cfg)
    if report.failures or report.shard_errors:
        typer.echo(
            f"{report.failures} failed (tile, modality) in {report.run_dir / 'failures.json'}"
            f"{f', {report.shard_errors} shard task(s) raised' if report.shard_errors else ''}; "
            "retry with --retry-failed",
            err=True,
        )
        raise typer.Exit(EXIT_BUILD_FAILURES)


def _say_build(report: BuildReport, verb: str = "built", retried: bool = True) -> None:
    tiles = report.tiles
    if report.shards_submitted == 0:
        hint = "" if retried else "; failed tiles, if any, are rebuilt with --retry-failed"
        typer.echo(
            f"nothing to do: every sample of the {report.shards} shards is finished "
            f"({report.store}){hint}"
        )
        return
    typer.echo(
        f"{verb} {sum(tiles.values())} tiles in {report.seconds:.1f} s "
        f"({report.tiles_per_minute:.1f}/min): {tiles['done']} done, {tiles['empty']} empty, "
        f"{tiles['failed']} failed; {report.shards_submitted} of {report.shards} shards "
        f"submitted\nrun log: {report.log}"
    )


def _say_damage(cfg: BuildConfig) -> None:
    """After a build with nothing to do: say so if shard files are missing or unreadable."""
    from terracube.pipeline.corpus.integrity import corpus_damage
    from terracube.pipeline.corpus.store import Corpus

    damage = corpus_damage(Corpus.open(cfg.store_url, cfg.output.storage_options or None))
    if damage:
        typer.echo(
            f"warning: {len(damage)} shard file(s) of finished samples are damaged, e.g. "
            f"{damage[0]}; a build never rewrites finished shards: run `terracube repair "
            "CONFIG`",
            err=True,
        )


@app.command()
def repair(
    config: ConfigArg,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    synchronous: Annotated[
        bool, typer.Option("--synchronous", help="Rebuild in this process without Dask.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Rebuild exactly the shards of CONFIG's store that `terracube validate` finds
    damaged (missing or undecodable shard files, impossible values), then validate again.

    Nothing is read from a damaged shard: its samples are rebuilt from the plan's inputs,
    every other shard keeps its bytes. Run it again to resume. Exit status 0 when the
    store validates afterwards, 1 when problems remain, 3 when some tiles failed.
    """
    from terracube.workflows.build.repair import repair_corpus
    from terracube.workflows.config import load_config

    with user_errors():
        cfg = load_config(config)
        options = _build_options(cfg, scheduler, workers, synchronous, progress)
        result = repair_corpus(cfg, options)
    if result.build is None:
        typer.echo(f"nothing to repair: {cfg.store_url} validates")
        return
    typer.echo(
        f"{len(result.problems)} problem(s) in {len(result.shards)} shard(s): "
        f"{', '.join(map(str, result.shards))}"
    )
    _say_build(result.build, "rebuilt")
    for problem in result.remaining:
        typer.echo(str(problem))
    if result.remaining:
        typer.echo(f"{len(result.remaining)} problem(s) remain in {cfg.store_url}", err=True)
        raise typer.Exit(EXIT_PROBLEMS)
    if result.build.tiles["failed"] or result.build.shard_errors:  # of this run's shards
        raise typer.Exit(EXIT_BUILD_FAILURES)
    typer.echo(f"{cfg.store_url}: valid")


@app.command()
def status(
    store: StoreArg,
    as_json: JsonOption = False,
) -> None:
    """Show what a corpus holds: per-modality states, coverage per period, failures.

    Counts samples done / empty / failed / pending per modality, the share of done
    samples with valid data in each period, the most frequent failure reasons, and any
    shard file a written sample needs that is missing or undecodable. Reads only the
    store. Exit status 0 when complete, 1 when anything is pending or damaged.
    """
    from terracube.workflows.build.status import corpus_status, print_status

    with user_errors():
        url, options = store_and_options(store)
        result = corpus_status(url, options or None)
    print_status(result, sys.stdout, as_json)
    if not result["complete"]:
        raise typer.Exit(EXIT_PROBLEMS)


@app.command()
def validate(
    store: StoreArg,
    skip_data: Annotated[
        bool, typer.Option("--skip-data", help="Do not decode the band-group shards.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check a corpus against its format: every problem in plain words; exit 1 on any.

    Decodes every shard (zstd frame checksums included), checks state codes, value
    ranges and index rows, and that every shard file a written sample needs exists.
    `terracube repair CONFIG` rebuilds the shards it names."""
    import json

    from terracube.pipeline.corpus.schema import CorpusError
    from terracube.pipeline.corpus.store import local_root
    from terracube.pipeline.corpus.validate import validate as validate_store

    with user_errors():
        url, options = store_and_options(store)
        root = local_root(url)
        if root is not None and not root.exists():  # a missing store is an input error
            raise CorpusError(f"no corpus at {url!r}; check the path")
        problems = validate_store(url, options or None, read_data=not skip_data)
    if as_json:
        rows = [{"path": p.path, "message": p.message, "shard": p.shard} for p in problems]
        typer.echo(json.dumps({"url": url, "valid": not problems, "problems": rows}))
    else:
        for problem in problems:
            typer.echo(str(problem))
    if problems:
        if not as_json:
            typer.echo(f"{len(problems)} problem(s) in {url}", err=True)
        raise typer.Exit(EXIT_PROBLEMS)
    if not as_json:
        typer.echo(f"{url}: valid")


@app.command()
def quicklook(
    store: StoreArg,
    sample: Annotated[int, typer.Argument(help="Sample index (0-based).", show_default=False)],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
) -> None:
    """Draw one sample as a PNG: S2 true colour per period, S1 VV, WorldCover, OSM.

    Reads only the store; the image carries the data sources' attribution.
    """
    from terracube.pipeline.quicklook import quicklook as draw

    with user_errors(ValueError, IndexError):
        url, _ = store_and_options(store)
        written = draw(url, sample, out)
    typer.echo(f"wrote {written}")


app.add_typer(model_app)  # stats, pretrain, evaluate, demo: top-level commands too


def main() -> None:  # pragma: no cover (console entry point)
    app()
