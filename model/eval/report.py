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


def markdown_table(results: dict[str, Any]) -> str:
    metrics = METRIC_COLUMNS[results["kind"]]
    header = ["features", "probe", *metrics]
    lines = [
        f"# Evaluation: {results['task']}",
        "",
        f"Encoder: {results['encoder']}. Train/test {results['unit']}s: "
        f"{results['n_train']} / {results['n_test']} (split by {results['split']['by']}, "
        f"seed {results['split']['seed']}). kNN: k={results['knn']['k']}, cosine similarity, "
        f"votes weighted exp(sim/T) with T={results['knn']['temperature']}. Linear probe: "
        f"logistic regression, lr sweep {results['linear']['learning_rates']}, early stopping "
        "on a validation split of train.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(metrics)) + "|",
    ]
    for row in results["rows"]:
        cells = [row["features"], row["probe"], *(f"{row[m]:.4f}" for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
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
    fig.suptitle(f"{results['task']} ({results['unit']}s)")
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
