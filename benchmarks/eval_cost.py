"""How the accuracy matrix's evaluation cost grows with the number of experiences T.

The matrix needs, after each of the T experiences, an evaluation on every experience's test
data: T x T test-set passes (O(T^2) with a fixed test set per experience). Tiny MLP on a
synthetic class split with a fixed total of training and test data, T = 5, 10, 20, 50: prints
the wall time of training and of evaluation, and the effect of ``test_subsample``.

    python -m benchmarks.eval_cost [--quick]
"""
import argparse
import tempfile
import time

import torch

from cl.config import load_config
from cl.runner import run


def one(T, classes, subsample, out):
    cfg = load_config(None, [
        "scenario.name=class_split", "scenario.dataset=synthetic", f"scenario.n_experiences={T}",
        f"scenario.dataset_args={{num_classes: {classes}, n_train: {max(2, 4000 // classes)}, "
        f"n_test: {max(2, 2000 // classes)}, shape: [3, 8, 8]}}",
        "model.name=mlp", "model.args.hidden=64", "strategy.name=finetune", "strategy.batch_size=32",
        f"test_subsample={subsample}", "eval_initial=false", f"output_dir={out}", "logging.progress=false",
        "logging.console=false", "logging.plots=false", "logging.tensorboard=false"])
    t0 = time.perf_counter()
    res = run(cfg, f"{out}/T{T}-{subsample}")
    wall = time.perf_counter() - t0
    return res["timings"]["train_s"], res["timings"]["eval_s"], wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    Ts = [5, 10] if args.quick else [5, 10, 20, 50]
    classes = 100 if not args.quick else 10   # divisible by every T
    print(f"synthetic class split, {classes} classes, 4,000 train / 2,000 test images in total, tiny MLP")
    print(f"{'T':>4s} {'train s':>9s} {'eval s':>9s} {'eval/train':>11s} {'eval s (test_subsample=0.2)':>29s}")
    with tempfile.TemporaryDirectory() as out:
        for T in Ts:
            tr, ev, _ = one(T, classes, 1.0, out)
            _, ev_sub, _ = one(T, classes, 0.2, out)
            print(f"{T:4d} {tr:9.2f} {ev:9.2f} {ev / tr:11.2f} {ev_sub:29.2f}")


if __name__ == "__main__":
    main()
