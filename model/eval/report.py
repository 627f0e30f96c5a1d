"""Results of an evaluation as files: results.json, a markdown table, a confusion-matrix PNG.

The markdown table is generated from the same `rows` as the JSON, so the two can
never disagree; metrics are printed with 4 decimals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CONFUSION_PNG = "confusion_matrix.png"

METRIC_COLUMNS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "segmentation": ("mIoU", "accuracy"),
    "multilabel": ("micro_f1", "macro_f1", "mAP"),
}


def plural(unit: str) -> str:
    """ "sample" -> "samples", "patch" -> "patches"."""
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def _cell(row: dict[str, Any], metric: str) -> str:
    value = f"{row[metric]:.4f}"
    ci = row.get("ci", {}).get(metric)
    return f"{value} [{ci[1]:.3f}, {ci[2]:.3f}]" if ci else value


def _linear_text(results: dict[str, Any]) -> str:
    linear = results["linear"]
    stop = (
        f"early stopping (patience {linear['patience']})"
        if linear.get("patience")
        else f"{linear['max_epochs']} epochs, best validation epoch kept"
    )
    return (
        f"Linear probe: logistic regression, {linear.get('optimizer', 'adam')}, lr sweep "
        f"{linear['learning_rates']}, {stop}."
    )


def markdown_table(results: dict[str, Any]) -> str:
    metrics = METRIC_COLUMNS[results["kind"]]
    header = ["features", "probe", *metrics]
    geobench = results.get("geobench")
    lines = [
        f"# Evaluation: {results['task']}",
        "",
        f"Encoder: {results['encoder']}. Train/test {plural(results['unit'])}: "
        f"{results['n_train']} / {results['n_test']} (split by {results['split']['by']}, "
        f"seed {results['split']['seed']}). kNN: k={results['knn']['k']}, cosine similarity, "
        f"votes weighted exp(sim/T) with T={results['knn']['temperature']}. "
        + _linear_text(results)
        + (
            f" geobench protocol: knn5 = kNN k={geobench['knn_k']} ({geobench['knn_votes']} "
            f"votes), logreg = scikit-learn logistic regression, C sweep {geobench['logistic_C']}."
            if geobench
            else ""
        ),
        "",
    ]
    boot = results.get("bootstrap") or {}
    if boot.get("resamples"):
        lines += [
            f"Brackets: 95 % bootstrap interval over {boot['over']} ({boot['resamples']} resamples).",
            "",
        ]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(metrics)) + "|",
    ]
    for row in results["rows"]:
        cells = [row["features"], row["probe"], *(_cell(row, m) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    if results.get("differences"):
        lines += [
            "",
            "## Checkpoint minus baseline (paired bootstrap)",
            "",
            "| probe | minus | metric | difference | 95 % interval | verdict |",
            "|---|---|---|---:|---:|---|",
        ]
        for d in results["differences"]:
            lines.append(
                f"| {d['probe']} | {d['minus']} | {d['metric']} | {d['value']:+.4f} | "
                f"[{d['low']:+.3f}, {d['high']:+.3f}] | {d['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def plot_confusion(results: dict[str, Any], path: Path, features: str = "checkpoint") -> None:
    """One panel per probe of `features`; classes absent from truth and predictions are hidden."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["features"] == features and "confusion" in r]
    if not rows:
        raise ValueError(f"no confusion matrix for features {features!r} in the results")
    total = np.sum([np.asarray(r["confusion"]) for r in rows], axis=0)
    shown = np.flatnonzero(total.sum(0) + total.sum(1))
    names = [results["classes"][i] for i in shown]
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows) + 1, 4.5), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        matrix = np.asarray(row["confusion"])[np.ix_(shown, shown)]
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{features} / {row['probe']}: acc {row['accuracy']:.3f}", fontsize=9)
    fig.suptitle(f"{results['task']} ({plural(results['unit'])})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write the table (md + json) and, for single-label tasks, the confusion matrix PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / RESULTS_JSON, "markdown": out_dir / RESULTS_MD}
    if results["kind"] != "multilabel":
        paths["confusion"] = out_dir / CONFUSION_PNG
        plot_confusion(results, paths["confusion"])
    results["files"] = {k: p.name for k, p in paths.items()}
    paths["markdown"].write_text(markdown_table(results))
    paths["json"].write_text(json.dumps(results, indent=2))
    return paths
