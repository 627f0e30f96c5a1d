"""`terracube demo` end to end on the test world, its resume, and the model CLI commands.

The demo runs once per module at the `test` preset (4 tiles x 3 months, 12 nano
pretraining steps, a small evaluation); the tests then read what it left behind,
run it again (every finished stage skipped), and make it resume an interrupted
pretraining run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
from terracube.model.eval.report import METRIC_COLUMNS
from terracube.model.train.checkpoint import list_checkpoints
from terracube.workflows.cli.app import EXIT_USER_ERROR, app
from terracube.workflows.demo.doc_figures import figures_markdown, generated_block
from terracube.workflows.demo.params import (
    CLASSIFICATION,
    CONTEXT,
    SEGMENTATION,
    STAGES,
    STATE_FILE,
    DemoPaths,
    demo_params,
)
from terracube.workflows.demo.run import DemoState
from typer.testing import CliRunner

runner = CliRunner()
TASKS = (CLASSIFICATION, CONTEXT, SEGMENTATION)
TITLES = {CONTEXT: "crop types (context task)"}


def cell(row: dict[str, Any], metric: str) -> str:
    """How the report prints a metric: value and its 95 % interval."""
    ci = row["ci"][metric]
    return f"{row[metric]:.4f} [{ci[1]:.3f}, {ci[2]:.3f}]"


@dataclass(frozen=True)
class FirstRun:
    paths: DemoPaths
    output: str
    state: dict[str, Any]


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    root = tmp_path_factory.mktemp("demo") / "demo"
    result = invoke("demo", "--out", str(root), "--size", "test", "--no-progress")
    assert result.exit_code == 0, result.output
    paths = DemoPaths(root.resolve())
    return FirstRun(paths, result.output, json.loads(paths.state.read_text()))


def read_results(paths: DemoPaths, task: str) -> dict[str, Any]:
    return json.loads((paths.eval_dir(task) / "results.json").read_text())


def table_rows(markdown: str, section: str) -> list[list[str]]:
    """Body rows of the first table under the `## {section}` heading."""
    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def assert_real_png(path: Path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path
    colours = np.unique(image[..., :3].reshape(-1, 3).round(3), axis=0)
    assert len(colours) > 20, f"{path} looks blank ({len(colours)} colours)"
    assert float(image[..., :3].std()) > 0.02, path


@pytest.mark.slow
def test_demo_writes_every_report_artifact(first_run: FirstRun) -> None:
    paths, state = first_run.paths, first_run.state
    assert list(state["stages"]) == list(STAGES)
    for name, entry in state["stages"].items():
        assert entry["completed"] and not entry["skipped"], name
        assert entry["seconds"] > 0 and entry["cpu_seconds"] >= 0
    assert state["params"]["size"] == "test"
    assert f"report: {paths.report / 'index.html'}" in first_run.output

    md = (paths.report / "index.md").read_text()
    html = (paths.report / "index.html").read_text()
    md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    html_images = re.findall(r"<img src='([^']+)'", html)
    assert md_images == html_images
    expected = {"loss_curve.png", *(f"confusion_{task}.png" for task in TASKS)}
    assert expected <= set(md_images)
    quicklooks = [name for name in md_images if name.startswith("quicklook_")]
    assert len(quicklooks) == demo_params("test").quicklooks
    for name in md_images:
        assert_real_png(paths.report / name)

    # the results tables are the rows of results.json, in order, in both files
    for task in TASKS:
        results = read_results(paths, task)
        metrics = METRIC_COLUMNS[results["kind"]]
        expected_rows = [
            [row["features"], row["probe"], *(cell(row, m) for m in metrics)]
            for row in results["rows"]
        ]
        section = f"Evaluation: {TITLES.get(task, task)}"
        assert table_rows(md, section) == expected_rows
        assert [r[:2] for r in expected_rows] == [
            [f, p]
            for f in ("checkpoint", "random-init", "raw-pixels")
            for p in ("knn", "linear", "knn5", "logreg")
        ]
        for row in expected_rows:
            assert "".join(f"<td>{c}</td>" for c in row) in html
        # one verdict per probe and baseline, and it follows the interval
        body = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
        for d in (d for d in results["differences"] if d["metric"] == "accuracy"):
            word = {"better": "beats", "worse": "is WORSE than"}.get(
                d["verdict"], "is NOT resolved from"
            )
            assert (d["verdict"] == "better") == (d["low"] > 0)
            assert (
                f"{d['probe']} ({d['protocol']}): pretrained {word} {d['minus']}: accuracy" in body
            )
        assert results["checkpoint"].endswith("step_00000012.pt")

    # plan summary, corpus status and timings come from the stages' own files
    summary = json.loads(paths.plan_summary.read_text())
    assert summary["tiles"] == 4 and summary["periods"] == 3
    assert "4 tiles x 3 periods" in md
    assert "Store ../corpus.zarr: 4 samples x 3 periods" in md and "(complete;" in md
    assert str(paths.root) not in md and str(paths.root) not in html  # relative paths only
    assert "tile_map.png" in md_images and "embedding_pc1.png" in md_images
    assert "## Embeddings" in md and (paths.root / "embeddings" / "tiles.parquet").is_file()
    assert [row[0] for row in table_rows(md, "Run")] == [s for s in STAGES if s != "report"]
    assert "OpenStreetMap contributors" in md


@pytest.mark.slow
def test_second_run_skips_and_interrupted_pretraining_resumes(first_run: FirstRun) -> None:
    paths = first_run.paths
    checkpoints = {p.name: p.stat().st_mtime_ns for p in list_checkpoints(paths.checkpoints)}
    results_before = (paths.eval_dir(CLASSIFICATION) / "results.json").read_bytes()

    again = invoke("demo", "--out", str(paths.root), "--size", "test", "--no-progress")
    assert again.exit_code == 0, again.output
    state = json.loads(paths.state.read_text())
    for name in STAGES[:-1]:
        entry, before = state["stages"][name], first_run.state["stages"][name]
        assert entry["skipped"], name
        assert entry["seconds"] == before["seconds"], name  # timings of the run that did it
    assert not state["stages"]["report"]["skipped"]  # rewritten with this run's timings
    assert {p.name: p.stat().st_mtime_ns for p in list_checkpoints(paths.checkpoints)} == (
        checkpoints
    )
    assert (paths.eval_dir(CLASSIFICATION) / "results.json").read_bytes() == results_before
    assert "skipped (done before)" in (paths.report / "index.md").read_text()

    # lose the final checkpoint as if pretraining had been stopped after step 6
    assert sorted(checkpoints) == ["step_00000006.pt", "step_00000012.pt"]
    (paths.checkpoints / "step_00000012.pt").unlink()
    third = invoke("demo", "--out", str(paths.root), "--size", "test", "--no-progress")
    assert third.exit_code == 0, third.output
    state = json.loads(paths.state.read_text())
    assert state["stages"]["pretrain"]["detail"]["resumed_from_step"] == 6
    assert not state["stages"]["pretrain"]["skipped"]
    assert not state["stages"]["evaluate"]["skipped"]  # a new checkpoint is evaluated again
    for name in ("world", "plan", "build", "stats"):
        assert state["stages"][name]["skipped"], name
    metrics = (paths.pretrain_out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == list(range(1, 13))
    assert "resuming pretraining from step 6" in third.output


_BROWSER_CHECK = """<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const images = [...document.images].map(
    i => ({src: i.getAttribute('src'), loaded: i.complete && i.naturalWidth > 0}));
  const wide = [...document.querySelectorAll('p, pre, table, img, h1, h2')]
    .filter(e => e.getBoundingClientRect().right > width + 1)
    .map(e => e.tagName + ': ' + (e.textContent || e.getAttribute('src') || '').slice(0, 60));
  const out = document.createElement('pre');
  out.id = 'terracube-check';
  out.textContent = JSON.stringify({images, wide, width,
                                    scroll: document.documentElement.scrollWidth});
  document.body.appendChild(out);
});
</script>"""


def browser_check(report: Path, folder: Path) -> dict[str, Any]:
    """Render a copy of the report in headless chromium at 1000 px; what its images and
    boxes did, as measured in the page after load."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium not found: `apt-get install chromium` (.ci/run installs it)"
    copy = folder / "report"
    shutil.copytree(report, copy)
    page = copy / "check.html"
    page.write_text(
        (copy / "index.html").read_text().replace("</body>", _BROWSER_CHECK + "</body>")
    )
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,900",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    found = re.search(r'<pre id="terracube-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.slow
def test_the_report_renders_in_a_real_browser(first_run: FirstRun, tmp_path: Path) -> None:
    checked = browser_check(first_run.paths.report, tmp_path / "ok")
    assert checked["images"] and all(i["loaded"] for i in checked["images"]), checked
    assert {i["src"] for i in checked["images"]} >= {"tile_map.png", "loss_curve.png"}
    assert checked["wide"] == [] and checked["scroll"] <= checked["width"], checked
    # the check can fail: a lost figure and a box wider than the page are both seen
    broken = tmp_path / "broken"
    shutil.copytree(first_run.paths.report, broken)
    (broken / "tile_map.png").unlink()
    html = (broken / "index.html").read_text()
    (broken / "index.html").write_text(
        html.replace("<h2>", "<pre style='white-space:pre'>" + "x" * 400 + "</pre><h2>", 1)
    )
    failed = browser_check(broken, tmp_path / "failed")
    assert [i["src"] for i in failed["images"] if not i["loaded"]] == ["tile_map.png"]
    assert failed["scroll"] > failed["width"], failed  # the page now scrolls sideways


def test_the_demo_doc_figures_are_those_of_a_recorded_run() -> None:
    """docs/demo.md's timings and results are rendered from docs/demo-run/, the record of
    an actual `terracube demo` run, never typed (they drifted when they were)."""
    repo = Path(__file__).resolve().parents[2]
    doc = (repo / "docs" / "demo.md").read_text()
    assert generated_block(doc) == figures_markdown(repo / "docs" / "demo-run")


def test_the_demo_doc_states_the_presets() -> None:
    """docs/demo.md's table of sizes is checked against the presets the demo runs."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "demo.md").read_text()
    for size in ("test", "demo"):
        p = demo_params(size)
        pre = p.pretrain
        assert f"{p.samples_per_shard} samples per shard" in doc, size
        assert f"nano, {pre.steps} steps, batch {pre.batch_size}" in doc, size
        assert f"{pre.crop_sizes[0]} px crops, patch {pre.patch_sizes[0]}" in doc, size


@pytest.mark.slow
def test_stats_and_evaluate_commands_on_the_demo_corpus(first_run: FirstRun) -> None:
    store = str(first_run.paths.store)
    stats = invoke("stats", store)
    assert stats.exit_code == 0, stats.output
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in stats.output.splitlines()[2:]}
    assert ("s2_10m", "B02") in lines and ("s1", "VH") in lines
    assert int(lines[("s2_10m", "B02")][0]) > 0

    out = first_run.paths.root / "eval-none"
    result = invoke(
        "evaluate", "none", "--task", CLASSIFICATION, "--data", store, "--out", str(out),
        "--patch-size", "8", "--crop", "64",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    rows = {(r["features"], r["probe"]): r for r in results["rows"]}
    for probe in ("knn", "linear"):  # no checkpoint: the encoder under test is the random init
        assert rows[("checkpoint", probe)]["accuracy"] == rows[("random-init", probe)]["accuracy"]
        cell = f"| checkpoint | {probe} | {rows[('checkpoint', probe)]['accuracy']:.4f} ["
        assert cell in result.output


# --------------------------------------------------------------------------- user errors


def assert_user_error(args: list[str], *words: str) -> None:
    result = invoke(*args)
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: "), result.output
    for word in words:
        assert word in result.output, result.output


def test_stats_of_a_missing_store(tmp_path: Path) -> None:
    assert_user_error(["stats", str(tmp_path / "nope.zarr")], "nope.zarr")


def test_pretrain_config_errors(tmp_path: Path) -> None:
    assert_user_error(
        ["pretrain", str(tmp_path / "missing.yaml")], "missing.yaml", "does not exist"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {store: x.zarr}\nstesp: 3\noptim: {lr_max: 1}\n")
    assert_user_error(["pretrain", str(bad)], "stesp", "optim.lr_max", "unknown key")
    empty_store = tmp_path / "ok.yaml"
    empty_store.write_text(f"data: {{store: {tmp_path / 'absent.zarr'}}}\nsteps: 200\n")
    assert_user_error(["pretrain", str(empty_store)], "absent.zarr")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"--task": "landcover"}, ["--task 'landcover'", "worldcover-classification"]),
        ({"checkpoint": "nothere.pt"}, ["nothere.pt", "'none'"]),
        ({"--data": "absent.zarr"}, ["--data", "absent.zarr"]),
        ({"--patch-size": "9"}, ["--patch-size 9", "1..8"]),
        ({"--device": "tpu"}, ["--device 'tpu'"]),
        ({"--crop": "30"}, ["crop=30", "divide"]),
        ({}, ["has no sample with worldcover done", "build it first"]),
    ],
)
def test_evaluate_argument_errors(tmp_path: Path, edit: dict[str, str], words: list[str]) -> None:
    from terracube.pipeline.corpus.store import create_corpus

    store = tmp_path / "c.zarr"
    create_corpus(
        store, n_samples=2, n_periods=1, samples_per_shard=2, groups=("s2_10m", "worldcover")
    )
    options = {"--task": CLASSIFICATION, "--data": str(store), "--out": str(tmp_path / "o")}
    checkpoint = edit.pop("checkpoint", "none")
    options.update({k: v if k != "--data" else str(tmp_path / v) for k, v in edit.items()})
    args = ["evaluate", checkpoint, *(x for kv in options.items() for x in kv)]
    assert_user_error(args, *words)


def test_demo_refuses_a_folder_of_another_size(tmp_path: Path) -> None:
    DemoState.open(tmp_path / STATE_FILE, demo_params("test")).save()
    assert_user_error(["demo", "--out", str(tmp_path), "--size", "demo"], "'test'", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # nothing else written
    assert_user_error(["demo", "--out", str(tmp_path / "x"), "--size", "huge"], "'huge'", "test")
