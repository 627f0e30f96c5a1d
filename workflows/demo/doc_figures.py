"""docs/demo.md's measured figures, generated from a recorded demo run, never typed.

The figures in the doc drifted from what the demo printed. Now a real `terracube demo`
run's record — its `demo_state.json` and each task's `results.json`, copied into
`docs/demo-run/` — is the source: `figures_markdown` renders the timings and results
tables from it, the doc holds that text between two markers, and a test checks that
the doc's block equals what the record gives. To refresh after a change:

    terracube demo --out /tmp/d
    python -m terracube.workflows.demo.doc_figures /tmp/d docs/demo-run docs/demo.md
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from terracube.model.eval.report import METRIC_COLUMNS, plural
from terracube.workflows.demo.report import throughput

BEGIN = "<!-- figures: generated from docs/demo-run/ by workflows/demo/doc_figures.py -->"
END = "<!-- end of generated figures -->"


def figures_markdown(record: Path) -> str:
    """The timings and results tables of the run recorded in `record`."""
    state = json.loads((record / "demo_state.json").read_text())
    full_runs = [r for r in state.get("runs", []) if not r.get("skipped")]
    last = full_runs[-1] if full_runs else state["last_run"]  # the run that did every stage
    when = last["finished_at"][:10]
    rss = f", peak RSS {last['peak_rss_mb'] / 1024:.2f} GB" if "peak_rss_mb" in last else ""
    total = sum(entry["seconds"] for entry in state["stages"].values())
    lines = [
        f"Recorded run ({when}, `terracube demo --size {state['params']['size']}` on the "
        f"2-core development machine): **{int(total // 60)} min {total % 60:.0f} s** of "
        f"stage time{rss}.",
        "",
        "| stage | wall s | CPU s | throughput |",
        "|---|---:|---:|---|",
    ]
    for name, entry in state["stages"].items():
        lines.append(
            f"| {name} | {entry['seconds']:.1f} | {entry.get('cpu_seconds', 0.0):.1f} | "
            f"{throughput(name, entry)} |"
        )
    for results_file in sorted(record.glob("results_*.json")):
        results = json.loads(results_file.read_text())
        metrics = METRIC_COLUMNS[results["kind"]]
        lines += [
            "",
            f"{results['task']}: {results['n_train']} train / {results['n_test']} test "
            f"{plural(results['unit'])}, split by {results['split']['by']}, patch size "
            f"{results['patch_size']}, encoder {results['encoder']}.",
            "",
            "| features | probe | " + " | ".join(metrics) + " |",
            "|---|---|" + "---:|" * len(metrics),
        ]
        for row in results["rows"]:
            cells = " | ".join(_cell(row, m) for m in metrics)
            lines.append(f"| {row['features']} | {row['probe']} | {cells} |")
        verdicts = [d for d in results.get("differences", []) if d["metric"] == "accuracy"]
        if verdicts:
            lines += [
                "",
                "| probe | accuracy minus | difference [95 % CI] | verdict |",
                "|---|---|---|---|",
            ]
            for d in verdicts:
                lines.append(
                    f"| {d['probe']} | {d['minus']} | {d['value']:+.4f} "
                    f"[{d['low']:+.3f}, {d['high']:+.3f}] | {d['verdict']} |"
                )
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], metric: str) -> str:
    ci = row.get("ci", {}).get(metric)
    return f"{row[metric]:.4f} [{ci[1]:.3f}, {ci[2]:.3f}]" if ci else f"{row[metric]:.4f}"


def generated_block(doc: str) -> str:
    """The text between the markers of `doc` (ValueError when they are missing)."""
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return doc[start:end].strip("\n") + "\n"


def record_run(demo: Path, record: Path) -> None:
    """Copy what the figures are made from out of a demo folder."""
    record.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(demo / "demo_state.json", record / "demo_state.json")
    for results in sorted((demo / "eval").glob("*/results.json")):
        shutil.copyfile(results, record / f"results_{results.parent.name}.json")


def update_doc(record: Path, doc_path: Path) -> None:
    doc = doc_path.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    doc_path.write_text(doc[:start] + "\n" + figures_markdown(record) + doc[end:])


if __name__ == "__main__":  # demo folder, record folder, doc
    if len(sys.argv) != 4:
        sys.exit("usage: python -m terracube.workflows.demo.doc_figures DEMO RECORD DOC")
    demo_dir, record_dir, doc_file = (Path(a) for a in sys.argv[1:])
    record_run(demo_dir, record_dir)
    update_doc(record_dir, doc_file)
