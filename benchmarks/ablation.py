"""Ablations of the recipe on the context task: does pretraining learn, and do the paper's
choices matter?

    python benchmarks/ablation.py --quick            # ~20 min on 2 cores, one seed
    python benchmarks/ablation.py                    # 3 seeds, longer runs
    python benchmarks/ablation.py --arms recipe --steps 300 --lr 2e-3   # a schedule probe

Set-up: the demo-size synthetic world (20 tiles, 12 monthly periods, both UTM zones) is
generated and built once into --work (reused when present). Every arm pretrains a nano
encoder on that corpus with the same steps, schedule, batch and seeds, then is probed
frozen on the context task (crop types under cropland that differ only in the timing of
their season: workflows/world/crops.py), per 80 m patch, split by tile, with both
protocols (olmoearth: kNN k=20 + AdamW linear probe; geobench: kNN k=5 + logistic
regression) and 95 % bootstrap intervals over test patches (and seeds when several).

Arms (one factor changed from the recipe each):
  recipe            frozen random patch-embedding target, per-modality negatives,
                    modality-aware masking (OlmoEarth v1)
  target_ema        an EMA copy of the encoder as the target (classic latent MIM)
  target_pixels     pixel regression, MSE (MAE-style)
  negatives_band    negatives within the band group (the paper's "band set")
  negatives_all     negatives over every decoded token of the sample
  masking_uniform   uniform random token masking

Each arm reports, per probe: accuracy and mIoU with intervals, the paired difference
to random init and to raw pixels (intervals), and collapse diagnostics of its patch
embeddings on the test set (effective rank, per-dimension std, mean pairwise cosine)
plus the last logged training values. Random init and raw pixels are measured once (the
encoder's random init is the same for every arm: built from the same seed before any
arm-specific module). Ratios are against random init, measured in the same run.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ARMS: dict[str, dict[str, Any]] = {
    "recipe": {},
    "target_ema": {"model": {"target": "ema_encoder"}},
    "target_pixels": {"model": {"target": "pixels"}},
    "negatives_band": {"model": {"negatives": "band_group"}},
    "negatives_all": {"model": {"negatives": "all"}},
    "masking_uniform": {"masking": {"strategy": "uniform_random"}},
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_corpus(work: Path) -> tuple[str, Path]:
    """The demo world and its built corpus (+ stats) under `work`, made once."""
    from terracube.model.data.pixel_stats import stats_command
    from terracube.workflows.build.runner import BuildOptions, build_corpus
    from terracube.workflows.config import load_config
    from terracube.workflows.world import generate_world
    from terracube.workflows.world.crops import LABELS_DIR

    world = work / "world"
    if not (world / "build.yaml").is_file():
        if world.exists():
            shutil.rmtree(world)
        t0 = time.perf_counter()
        generate_world(world, seed=0, size="demo")
        print(f"world generated in {time.perf_counter() - t0:.0f} s", flush=True)
    config_path = work / "build.yaml"
    document = yaml.safe_load((world / "build.yaml").read_text())
    for source in document["modalities"].values():
        for key in ("catalog", "path"):
            if key in source:
                source[key] = str((world / source[key]).resolve())
    document["output"]["store"] = str(work / "corpus.zarr")
    config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    config = load_config(config_path)
    if not (work / "corpus.zarr" / ".built").exists():
        t0 = time.perf_counter()
        report = build_corpus(config, BuildOptions(synchronous=True, show_progress=False))
        if report.tiles.get("done") != 20:
            raise SystemExit(f"the world corpus did not build: {report.tiles}")
        stats_command(config.store_url)
        (work / "corpus.zarr" / ".built").write_text("ok\n")
        print(f"corpus built in {time.perf_counter() - t0:.0f} s", flush=True)
    return config.store_url, world / "truth" / LABELS_DIR


def pretrain_arm(
    store: str, out: Path, arm: str, seed: int, args: argparse.Namespace
) -> tuple[Path, dict[str, Any], float]:
    from terracube.model.data.plan import LoaderParams
    from terracube.model.nn.olmoearth import LatentMIMConfig
    from terracube.model.train.masking import MaskingParams
    from terracube.model.train.pretrain import PretrainSettings, train
    from terracube.model.train.schedule import OptimParams

    change = ARMS[arm]
    loader = LoaderParams(
        batch_size=args.batch,
        crop_sizes=(32,),
        patch_sizes=(8,),
        token_budget=args.token_budget,
        seed=seed,
        masking=MaskingParams(**change.get("masking", {})),
    )
    settings = PretrainSettings(
        store=store,
        checkpoint_dir=out / "checkpoints",
        out_dir=out / "run",
        loader=loader,
        optim=OptimParams(lr=args.lr, warmup_steps=max(1, args.steps // 10)),
        model=LatentMIMConfig(size="nano", **change.get("model", {})),
        steps=args.steps,
        workers=0,
        seed=seed,
        checkpoint_interval=args.steps,
        keep_checkpoints=1,
        device="cpu",
    )
    t0 = time.perf_counter()
    checkpoint = train(settings)
    seconds = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    tail = rows[-10:]
    last = {
        k: float(np.mean([r[k] for r in tail if k in r]))
        for k in ("loss", "token_effective_rank", "token_embedding_std", "token_mean_cosine")
        if any(k in r for r in tail)
    }
    last["first_loss"] = rows[0]["loss"]
    return checkpoint, last, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, the demo's schedule")
    parser.add_argument("--work", type=Path, default=Path("/tmp/terracube-ablation"))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default=None, help="comma list (default 0 quick, 0,1,2 full)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--token-budget", type=int, default=384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    args.steps = args.steps or (150 if args.quick else 600)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    store, labels = prepare_corpus(args.work)

    from terracube.model.eval.evaluate import EvalParams, feature_set, init_model, load_encoders
    from terracube.model.eval.protocols import ProbeSet, metric_names, run_probes
    from terracube.model.eval.raster_labels import raster_task
    from terracube.model.eval.tasks import CropParams, split_by_key, token_labels
    from terracube.model.eval.uncertainty import bootstrap_interval, paired_difference
    from terracube.model.train.diagnostics import collapse_report

    params = EvalParams(patch_size=8, crop=CropParams(crop=32), labels=str(labels), seed=0)
    task = raster_task(store, labels, "segmentation", params.crop)
    n_classes = len(task.class_names)
    patch_labels = token_labels(task.labels, 8, n_classes)
    train_rows, test_rows = split_by_key(task.split_keys, params.test_fraction, params.seed)
    probes = ProbeSet()

    def probe(
        features: np.ndarray, usable: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        def rows(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            keep = usable[r] & (patch_labels[r] >= 0)
            return features[r][keep], patch_labels[r][keep]

        tx, ty = rows(train_rows)
        vx, vy = rows(test_rows)
        results = run_probes("segmentation", tx, ty, vx, n_classes, probes)
        return {k: np.asarray(v.predictions) for k, v in results.items()}, vy, vx

    baseline_model = init_model("nano", 0).eval().requires_grad_(False)
    t0 = time.perf_counter()
    random_feats, usable = feature_set(task, baseline_model, params, per_token=True)
    raw_feats, _ = feature_set(task, None, params, per_token=True)
    random_pred, truth, random_test = probe(random_feats, usable)
    raw_pred, _, _ = probe(raw_feats, usable)
    print(
        f"context task: {len(truth)} test / {int((usable[train_rows] & (patch_labels[train_rows] >= 0)).sum())} "
        f"train patches, {n_classes} classes; baselines in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    def summary(preds: dict[str, np.ndarray]) -> dict[str, Any]:
        return {
            p: {
                m: bootstrap_interval(truth, v, n_classes, m, args.bootstrap).as_list()
                for m in metric_names("segmentation")
            }
            for p, v in preds.items()
        }

    report: dict[str, Any] = {
        "random-init": {
            "probes": summary(random_pred),
            "diagnostics": collapse_report(torch.from_numpy(random_test).float()),
        },
        "raw-pixels": {"probes": summary(raw_pred)},
    }
    arm_results: dict[str, Any] = {}
    arm_predictions: dict[str, dict[str, np.ndarray]] = {}
    for arm in arms:
        per_seed: list[dict[str, np.ndarray]] = []
        training: list[dict[str, Any]] = []
        diagnostics: list[dict[str, float]] = []
        for seed in seeds:
            out = (
                args.work
                / "runs"
                / f"{arm}-s{seed}-{args.steps}-{args.lr:g}-{args.batch}-{args.token_budget}"
            )
            checkpoint, last, seconds = pretrain_arm(store, out, arm, seed, args)
            encoders = load_encoders(checkpoint, replace(params, seed=seed))
            feats, _ = feature_set(task, encoders.trained, params, per_token=True)
            preds, _, test_x = probe(feats, usable)
            per_seed.append(preds)
            training.append(last | {"train_seconds": seconds})
            diagnostics.append(collapse_report(torch.from_numpy(test_x).float()))
            print(
                f"  {arm} seed {seed}: trained {seconds:.0f} s, "
                + ", ".join(f"{p} acc {np.mean(v == truth):.3f}" for p, v in preds.items()),
                flush=True,
            )
        stacked = {p: np.stack([s[p] for s in per_seed]) for p in per_seed[0]}
        arm_predictions[arm] = stacked
        entry: dict[str, Any] = {"probes": summary(stacked), "differences": {}}
        for p, pred in stacked.items():
            for other, base in (("random-init", random_pred[p]), ("raw-pixels", raw_pred[p])):
                d = paired_difference(truth, pred, base, n_classes, "accuracy", args.bootstrap)
                entry["differences"][f"{p}_minus_{other}"] = d.as_list()
                ratio = float(np.mean(pred == truth) / max(np.mean(base == truth), 1e-9))
                entry["differences"][f"{p}_ratio_to_{other}"] = ratio
        entry["diagnostics"] = {
            k: float(np.mean([d[k] for d in diagnostics])) for k in diagnostics[0]
        }
        entry["training"] = {k: float(np.mean([t[k] for t in training])) for k in training[0]}
        arm_results[arm] = entry

    if "recipe" in arm_predictions:  # each arm against the recipe, paired on the same patches
        for arm, stacked in arm_predictions.items():
            if arm == "recipe":
                continue
            for p, pred in stacked.items():
                d = paired_difference(
                    truth, pred, arm_predictions["recipe"][p], n_classes, "accuracy", args.bootstrap
                )
                arm_results[arm]["differences"][f"{p}_minus_recipe"] = d.as_list()
    print()
    print(
        f"{'arm':<17} {'probe':<7} {'accuracy [95% CI]':<26} {'minus random [CI]':<28} {'minus raw [CI]':<28} rank  cos"
    )
    for name, entry in {**report, **arm_results}.items():
        for p, metrics in entry["probes"].items():
            a = metrics["accuracy"]
            diffs = entry.get("differences", {})
            dr = diffs.get(f"{p}_minus_random-init")
            dp = diffs.get(f"{p}_minus_raw-pixels")
            dq = diffs.get(f"{p}_minus_recipe")
            fmt = lambda d: f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" if d else "-"  # noqa: E731
            diag = entry.get("diagnostics", {})
            print(
                f"{name:<17} {p:<7} {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}]{'':<6} {fmt(dr):<28} {fmt(dp):<28} "
                f"{diag.get('effective_rank', float('nan')):5.1f} {diag.get('mean_cosine', float('nan')):.3f}"
                + (f"  minus recipe {fmt(dq)}" if dq else "")
            )
    recipe = arm_results.get("recipe", {}).get("differences", {})
    result = {
        "benchmark": "ablation",
        "quick": args.quick,
        "steps": args.steps,
        "lr": args.lr,
        "batch": args.batch,
        "token_budget": args.token_budget,
        "seeds": seeds,
        "test_patches": len(truth),
        "baselines": report,
        "arms": arm_results,
        "knn_delta_ci_low": recipe.get("knn_minus_random-init", [None, None])[1],
        "linear_delta_ci_low": recipe.get("linear_minus_random-init", [None, None])[1],
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
