"""The demo's report folder: one document model rendered as index.md and index.html.

Both files come from the same sections, so they always say the same thing. Every
figure is copied into the report folder and referenced by a relative name, so the
folder can be zipped or served as it is. Numbers are read from the files the stages
wrote (plan summary, store, metrics, results.json), never recomputed here.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from terracube.workflows.demo.params import CONTEXT, DemoParams, DemoPaths

INDEX_MD = "index.md"
INDEX_HTML = "index.html"
FEATURE_LABELS = {
    "checkpoint": "pretrained (checkpoint)",
    "random-init": "random-init encoder",
    "raw-pixels": "raw pixels",
}


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Pre:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    src: str
    """File name inside the report folder."""
    alt: str


Block = Text | Pre | Table | Image


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


# --------------------------------------------------------------------------- rendering


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Pre):
                lines += ["```", block.text.rstrip("\n"), "```", ""]
            elif isinstance(block, Table):
                lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                lines.append("|" + "|".join("---" for _ in block.header) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                lines.append("")
            else:
                lines += [f"![{block.alt}]({block.src})", ""]
    return "\n".join(lines)


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "p{overflow-wrap:anywhere}"
    "table{border-collapse:collapse;margin:.5em 0;max-width:100%;display:block;overflow-x:auto}"
    "td,th{border:1px solid #ccc;padding:3px 8px}"
    "td{text-align:right}td:first-child,td:nth-child(2){text-align:left}"
    "img{max-width:100%;height:auto;border:1px solid #eee}"
    "pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap;overflow-wrap:anywhere}"
)
"""Nothing wider than the page: long paths wrap, wide tables scroll inside their box
(checked in a real browser by tests/integrity/test_report_browser.py)."""


def render_html(title: str, sections: Sequence[Section]) -> str:
    out = StringIO()
    e = html.escape
    out.write(f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>")
    out.write(f"<style>{_STYLE}</style></head><body>\n<h1>{e(title)}</h1>\n")
    for section in sections:
        out.write(f"<h2>{e(section.title)}</h2>\n")
        for block in section.blocks:
            if isinstance(block, Text):
                out.write(f"<p>{e(block.text)}</p>\n")
            elif isinstance(block, Pre):
                out.write(f"<pre>{e(block.text)}</pre>\n")
            elif isinstance(block, Table):
                out.write("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in block.header))
                out.write("</tr>\n")
                for row in block.rows:
                    out.write("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>\n")
                out.write("</table>\n")
            else:
                out.write(f"<p><img src='{e(block.src)}' alt='{e(block.alt)}'></p>\n")
    out.write("</body></html>\n")
    return out.getvalue()


# --------------------------------------------------------------------------- content


def results_table(results: dict[str, Any]) -> Table:
    """The probe table of one evaluation, straight from its rows (4 decimals)."""
    from terracube.model.eval.report import METRIC_COLUMNS

    metrics = METRIC_COLUMNS[results["kind"]]

    def cell(row: dict[str, Any], m: str) -> str:
        ci = row.get("ci", {}).get(m)
        return f"{row[m]:.4f} [{ci[1]:.3f}, {ci[2]:.3f}]" if ci else f"{row[m]:.4f}"

    rows = tuple(
        (row["features"], row["probe"], *(cell(row, m) for m in metrics)) for row in results["rows"]
    )
    return Table(("features", "probe", *(f"{m} [95 % CI]" for m in metrics)), rows)


VERDICT_WORDS = {
    "better": "beats",
    "worse": "is WORSE than",
    "not resolved": "is NOT resolved from",
}


def pretraining_verdict(results: dict[str, Any]) -> list[str]:
    """Per probe and baseline: the checkpoint's accuracy minus the baseline's, with its paired
    95 % interval; "beats" only when the interval lies above zero."""
    lines = []
    for d in results.get("differences", []):
        if d["metric"] != "accuracy":
            continue
        word = VERDICT_WORDS[d["verdict"]]
        lines.append(
            f"{d['probe']} ({d['protocol']}): pretrained {word} {d['minus']}: accuracy "
            f"{d['value']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        )
    if not lines:  # an older results.json without intervals
        by_key = {(r["features"], r["probe"]): r for r in results["rows"]}
        for probe in dict.fromkeys(r["probe"] for r in results["rows"]):
            trained, random = by_key[("checkpoint", probe)], by_key[("random-init", probe)]
            word = "beats" if trained["accuracy"] > random["accuracy"] else "does NOT beat"
            lines.append(f"{probe}: pretrained {word} random-init (no interval recorded)")
    return lines


def throughput(name: str, entry: dict[str, Any]) -> str:
    """What a stage got through per unit of its wall time, from the facts it recorded."""
    detail, seconds = entry.get("detail") or {}, float(entry.get("seconds") or 0.0)
    if seconds <= 0:
        return ""
    if name == "world" and "tiles" in detail:
        return f"{60 * detail['tiles'] / seconds:.1f} tiles/min"
    if name == "plan" and "items" in detail:
        return f"{detail['items'] / seconds:.0f} items/s"
    if name == "build" and "tiles_per_minute" in detail:
        return f"{detail['tiles_per_minute']:.1f} tiles/min"
    if name == "pretrain" and detail.get("steps"):
        done = detail["steps"] - detail.get("resumed_from_step", 0)
        return f"{60 * done / seconds:.1f} steps/min" if done > 0 else ""
    if name == "evaluate":
        samples = sum(v.get("n_train", 0) + v.get("n_test", 0) for v in detail.values())
        return f"{samples / seconds:.1f} samples/s" if samples else ""
    return ""


def _timings(state: dict[str, Any]) -> Table:
    rows = []
    for name, entry in state["stages"].items():
        rows.append(
            (
                name,
                "skipped (done before)" if entry["skipped"] else "ran",
                f"{entry['seconds']:.1f}",
                f"{entry.get('cpu_seconds', 0.0):.1f}",
                throughput(name, entry),
                f"{entry['last_run_seconds']:.1f}",
            )
        )
    header = (
        "stage",
        "this run",
        "wall s when it ran",
        "CPU s when it ran",
        "throughput",
        "wall s this run",
    )
    return Table(header, tuple(rows))


def relative(path: str | os.PathLike[str], report: Path) -> str:
    """A path as seen from the report folder (the folder moves with the demo)."""
    return os.path.relpath(Path(path).resolve(), report.resolve())


def _plan_section(summary: dict[str, Any]) -> Section:
    rows = tuple(
        (
            name,
            str(summary["items"].get(name, 0)),
            f"{summary['estimated_bytes'].get(name, 0) / 2**20:.1f}",
            str(summary["requests"]["asset_reads"].get(name, 0)),
            str(len(summary["tiles_without_data"].get(name, []))),
            str(summary["empty_periods"].get(name, 0)),
        )
        for name in summary["items"]
    )
    text = (
        f"{summary['tiles']} tiles x {summary['periods']} periods, {summary['items_total']} "
        f"items, {summary['assignments']} (tile, period, item) assignments, "
        f"{summary['requests']['search']} search request(s) "
        f"({summary['requests']['search_calls']} search call(s))."
    )
    header = (
        "modality",
        "items",
        "MiB to read",
        "asset requests",
        "tiles w/o data",
        "empty periods",
    )
    return Section("Plan (dry-run summary)", (Text(text), Table(header, rows)))


def _status_section(store: Path, report: Path) -> Section:
    """`terracube status` as tables: states per modality, valid coverage per period."""
    from terracube.workflows.build.status import corpus_status

    status = corpus_status(str(store))
    verdict = "complete" if status["complete"] else "INCOMPLETE"
    text = (
        f"Store {relative(store, report)}: {status['samples']} samples x {status['periods']} "
        f"periods in {status['shards']} shards ({verdict}; "
        f"{len(status['damaged'])} damaged shard files)."
    )
    states = Table(
        ("modality", "done", "empty", "failed", "pending"),
        tuple(
            (name, *(str(c[k]) for k in ("done", "empty", "failed", "pending")))
            for name, c in status["states"].items()
        ),
    )
    blocks: list[Block] = [Text(text), states]
    if status["coverage"]:
        starts = [str(s)[:7] if s else "-" for s in status["period_starts"]]
        blocks.append(Text("Share of done samples with valid pixels, per period:"))
        blocks.append(
            Table(
                ("modality", *starts),
                tuple(
                    (name, *("-" if v is None else f"{v:.2f}" for v in values))
                    for name, values in status["coverage"].items()
                ),
            )
        )
    return Section("Corpus status", tuple(blocks))


def tile_map(store: Path, plan_dir: Path, out_png: Path) -> Path:
    """The planned tiles' footprints over lon/lat, coloured by whether every modality of
    the tile is done."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch
    from terracube.catalog.plan import Plan
    from terracube.pipeline.corpus.store import Corpus, SampleState

    samples = Plan.read_parquet(plan_dir).samples
    corpus = Corpus.open(store)
    done = np.ones(corpus.n_samples, dtype=bool)
    for m in corpus.params.modalities:
        done &= corpus.states(m) == int(SampleState.DONE)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for index, geometry in zip(samples.sample_index, samples.geometry, strict=True):
        x, y = geometry.exterior.xy
        colour = "#2b8cbe" if done[int(index)] else "#e34a33"
        ax.fill(x, y, facecolor=colour, alpha=0.45, edgecolor=colour, linewidth=0.8)
    epsg = sorted(set(samples.epsg.astype(int)))
    ax.set_xlabel("longitude (degrees)")
    ax.set_ylabel("latitude (degrees)")
    ax.set_aspect(1 / np.cos(np.deg2rad(float(samples.center_lat.mean()))))
    ax.set_title(f"{len(samples)} tiles of 2560 m (EPSG {', '.join(map(str, epsg))})", fontsize=9)
    ax.legend(
        handles=[
            Patch(facecolor="#2b8cbe", alpha=0.45, label="every modality done"),
            Patch(facecolor="#e34a33", alpha=0.45, label="some modality not done"),
        ],
        fontsize=7,
        loc="best",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def _quicklooks(store: Path, report: Path, count: int) -> list[Image]:
    """PNGs of `count` evenly spaced built samples (kept from earlier runs when present)."""
    import numpy as np
    from terracube.pipeline.corpus.store import Corpus, SampleState
    from terracube.pipeline.quicklook import quicklook

    corpus = Corpus.open(store)
    done = np.flatnonzero(corpus.states("sentinel2_l2a") == SampleState.DONE)
    if not done.size or count < 1:
        return []
    picks = sorted({int(done[i]) for i in np.linspace(0, done.size - 1, count).round().astype(int)})
    tile_ids = corpus.array("tile_id")
    images = []
    for sample in picks:
        png = report / f"quicklook_sample{sample:04d}.png"
        if not png.is_file():
            quicklook(store, sample, png)
        tile_id = str(tile_ids[sample])  # a string array's element (zarr: any scalar)
        images.append(Image(png.name, f"sample {sample}: tile {tile_id}"))
    return images


def _copy(src: Path, report: Path, name: str) -> str:
    shutil.copyfile(src, report / name)
    return name


def _pretrain_section(paths: DemoPaths, report: Path, state: dict[str, Any]) -> Section:
    from terracube.model.train.pretrain import LOSS_CURVE_FILE, SUMMARY_FILE

    summary = json.loads((paths.pretrain_out / SUMMARY_FILE).read_text())
    rows = [
        json.loads(line)
        for line in (paths.pretrain_out / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    text = (
        f"Nano encoder, {summary['step']} optimizer steps on {summary['device']}; "
        f"loss {rows[0]['loss']:.4f} at step 1 -> {rows[-1]['loss']:.4f} at step "
        f"{rows[-1]['step']}. Checkpoint: {relative(summary['checkpoint'], report)}. "
        f"Config: {relative(paths.pretrain_yaml, report)}."
    )
    curve = _copy(paths.pretrain_out / LOSS_CURVE_FILE, report, "loss_curve.png")
    return Section("Pretraining", (Text(text), Image(curve, "pretraining loss curve")))


def _eval_section(paths: DemoPaths, report: Path, task: str) -> Section:
    from terracube.model.eval.report import CONFUSION_PNG, RESULTS_JSON, plural

    folder = paths.eval_dir(task)
    results = json.loads((folder / RESULTS_JSON).read_text())
    intro = (
        f"{results['n_train']} train / {results['n_test']} test {plural(results['unit'])}, split by "
        f"{results['split']['by']} ({results['split']['train_samples']} / "
        f"{results['split']['test_samples']} tiles), patch size {results['patch_size']}. "
        f"Protocols: olmoearth (knn: k={results['knn']['k']}, T={results['knn']['temperature']}; "
        "linear: AdamW logistic regression, best validation epoch of a learning-rate sweep) and "
        "geobench (knn5: k=5, one vote each; logreg: scikit-learn logistic regression, C "
        "sweep). Brackets: 95 % bootstrap intervals over the test "
        f"{plural(results['unit'])}. Encoder: {results['encoder']}. Full results: "
        f"{relative(folder / RESULTS_JSON, report)}."
    )
    if task == CONTEXT:
        intro = (
            "The context task: three crop types under WorldCover's cropland, each bare soil "
            "outside one three-month season of the same shape (March, June or September "
            "onwards), so every time-order-blind feature (raw pixels' mean and std over the "
            "year) is at chance, 1/3, on clear sky; only the timing of the season tells them "
            "apart. " + intro
        )
    blocks: list[Block] = [Text(intro), results_table(results)]
    blocks += [Text(line) for line in pretraining_verdict(results)]
    if (folder / CONFUSION_PNG).is_file():
        name = _copy(folder / CONFUSION_PNG, report, f"confusion_{task}.png")
        blocks.append(Image(name, f"confusion matrix, {task}"))
    title = "crop types (context task)" if task == CONTEXT else task
    return Section(f"Evaluation: {title}", tuple(blocks))


def _embed_section(paths: DemoPaths, report: Path) -> Section:
    from terracube.model.embed.store import PROVENANCE_ATTR, STORE_NAME
    from terracube.model.embed.table import TABLE_NAME
    from terracube.workflows.demo.embedding_map import pca_map

    store = paths.embeddings / STORE_NAME
    shown = pca_map(store, report / "embedding_pc1.png")
    prov = json.loads((store / "zarr.json").read_text())["attributes"][PROVENANCE_ATTR]
    text = (
        f"`terracube embed` of {prov['checkpoint']['file']} (step {prov['checkpoint']['step']}): "
        f"{shown['tiles']} tiles, {shown['patches_per_tile']} patch embeddings of "
        f"{shown['dim']} values each (patch {prov['patch_size']}, {prov['gsd_m']:.0f} m cells, "
        f"{prov['window']} px windows). The first three principal components explain "
        f"{', '.join(f'{v:.0%}' for v in shown['variance_share'])} of the variance. Maps: "
        f"{relative(store, report)}; pooled tiles: "
        f"{relative(paths.embeddings / TABLE_NAME, report)} (docs/embeddings.md)."
    )
    return Section("Embeddings", (Text(text), Image("embedding_pc1.png", "embedding PC1 map")))


def write_demo_report(
    paths: DemoPaths, state: dict[str, Any], tasks: Sequence[str], params: DemoParams
) -> Path:
    """Write report/index.md and report/index.html; returns the HTML path."""
    from terracube.pipeline.quicklook import ATTRIBUTION

    report = paths.report
    report.mkdir(parents=True, exist_ok=True)
    total = state.get("last_run", {}).get("seconds")
    intro = (
        f"The terracube pipeline on the synthetic '{params.size}' world: world -> plan -> build "
        f"(Dask LocalCluster, {params.build_workers} workers) -> stats -> pretrain -> evaluate -> "
        "embed. "
        + (f"This run took {total:.1f} s. " if total is not None else "")
        + f"Demo folder: {paths.root.name}/, the folder above this report."
    )
    plan_dir = paths.store.with_name(paths.store.name + ".run") / "plan"
    footprints = tile_map(paths.store, plan_dir, report / "tile_map.png")
    sections = [
        Section("Run", (Text(intro), _timings(state))),
        _plan_section(json.loads(paths.plan_summary.read_text())),
        Section("Tiles", (Image(footprints.name, "tile footprints over longitude/latitude"),)),
        _status_section(paths.store, report),
        Section("Samples", tuple(_quicklooks(paths.store, report, params.quicklooks))),
        _pretrain_section(paths, report, state),
        *(_eval_section(paths, report, task) for task in tasks),
        _embed_section(paths, report),
        Section("Attribution", (Text(ATTRIBUTION + " (here: synthetic data in their formats)."),)),
    ]
    title = f"terracube demo ({params.size})"
    (report / INDEX_MD).write_text(render_markdown(title, sections))
    index = report / INDEX_HTML
    index.write_text(render_html(title, sections))
    return index
