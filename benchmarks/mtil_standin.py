"""MTIL stand-in: the CLIP continual strategies side by side on three small offline datasets.

STAND-IN, NOT COMPARABLE TO ZSCL'S TABLES: no pretrained CLIP can be downloaded here, so the model is
open_clip's ``cl-test-tiny-clip`` config (0.8M parameters) with random weights, the tasks are the
CIFAR-10 JPEG copy, Fashion-MNIST and scikit-learn's digits at 16x16 (scenarios/mtil.py stand-ins),
and the schedule is shortened (100 steps of 64 per task instead of 1,001, lr 1e-3 instead of 1e-5
because a random model learns nothing at 1e-5 in 100 steps, weight ensemble every 10 steps instead
of 100). It shows the pipeline end to end (data -> MTIL stream -> strategies -> ZSCL's Transfer /
Avg. / Last on the task-IL matrix) and measures time per strategy. Reference data for zscl: the
current task's images and class prompts (no ImageNet / Conceptual Captions here).

    python -m benchmarks.mtil_standin [--steps 100] [--cifar DIR] [--fashion DIR]
"""
import argparse
import json
import os
import sys
import tempfile
import time

STRATEGIES = {
    "clip_finetune": [],
    "clip_lwf": [],
    "wise_ft": [],
    "zscl": ["strategy.ref_images=current", "strategy.ref_texts=current", "strategy.weight_ensemble_every=10"],
}


def config(name, out, steps, cifar, fashion, seed):
    from cl.config import load_config
    return load_config(None, [
        f"name={name}", f"output_dir={out}", f"seed={seed}", "device=cpu", "eval_initial=true",
        "scenario.name=mtil", "scenario.datasets=[cifar10_jpeg,fashion_mnist,digits]",
        f"scenario.roots.cifar10_jpeg={cifar}", f"scenario.roots.fashion_mnist={fashion}", "scenario.image_size=16",
        f"scenario.train_samples_per_task={64 * steps}", "scenario.test_fraction=0.2",
        "model.name=clip", "model.args.arch=cl-test-tiny-clip",
        f"strategy.name={name}", "strategy.lr=1e-3", "strategy.warmup_steps=10", "strategy.lr_by_task={}",
        "logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false",
        *STRATEGIES[name]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="training steps (batch 64) per task")
    p.add_argument("--cifar", default="/work/shared/data/cifar10-jpeg")
    p.add_argument("--fashion", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the table as JSON here")
    args = p.parse_args(argv)
    for path in (args.cifar, args.fashion):
        if not os.path.isdir(path):
            print(f"skipped: {path} not found (the stand-in needs the CIFAR-10 JPEG copy and Fashion-MNIST)")
            return 0
    import torch
    from cl.runner import run
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for name in STRATEGIES:
            t0 = time.perf_counter()
            res = run(config(name, out, args.steps, args.cifar, args.fashion, args.seed), os.path.join(out, name))
            m = res["metrics"]
            rows[name] = {"transfer": 100 * m["task_il_transfer"], "avg": 100 * m["task_il_average_all_entries"],
                          "last": 100 * m["task_il_last"], "seconds": time.perf_counter() - t0,
                          "zero_shot_row": [100 * a for a in res["initial_task_il_accuracy"]],
                          "matrix": [[100 * a for a in r] for r in res["task_il_accuracy_matrix"]]}
    zs = rows["clip_finetune"]["zero_shot_row"]
    print("MTIL stand-in (tiny random CLIP; NOT comparable to ZSCL's tables), task-IL accuracy, %")
    print("| strategy | Transfer | Avg. | Last | seconds |\n|---|---|---|---|---|")
    print(f"| initial model (random 'zero-shot') | {sum(zs[1:]) / len(zs[1:]):.1f} | {sum(zs) / len(zs):.1f} | "
          f"{sum(zs) / len(zs):.1f} | - |")
    for name, r in rows.items():
        print(f"| {name} | {r['transfer']:.1f} | {r['avg']:.1f} | {r['last']:.1f} | {r['seconds']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
