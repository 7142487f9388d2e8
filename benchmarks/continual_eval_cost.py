"""What continual evaluation costs, as a multiple of training time, for eval_every k = 1, 10, 100.

Split-Fashion-MNIST (5 experiences x 2 classes; Debian's dataset-fashion-mnist, read from
/usr/share/datasets/fashion-mnist), De Lange et al.'s Split-MNIST model and optimiser (MLP
784-400-400-10, SGD lr 0.01 momentum 0.9, batch 256), plain fine-tuning, one thread. Each row is
one run: the training time without the evaluations, the time of the continual evaluations
(``timings.continual_eval_s``: every k steps and at each experience end, on a fixed subset of
``--subset`` test samples per seen task, the authors' 1,000), their ratio, and the whole run's
training-loop time relative to the run without continual evaluation (k = 0, measured alongside).
The last row evaluates on the whole test sets (2,000 per task) at k = 1.

    python -m benchmarks.continual_eval_cost [--epochs 2] [--quick]
"""
import argparse
import tempfile

import torch

from cl.config import load_config
from cl.runner import run


def one(k, subset, args, out):
    data = (["scenario.dataset=synthetic", "scenario.dataset_args={shape: [1, 28, 28], n_train: 300, n_test: 200}"]
            if args.quick else ["scenario.dataset=fashion_mnist"])
    cfg = load_config(None, ["scenario.name=class_split", "scenario.n_experiences=5", *data,
                             "model.name=mlp", "model.args={hidden: 400, depth: 2}",
                             "strategy.name=finetune", "strategy.lr=0.01", "strategy.momentum=0.9",
                             "strategy.batch_size=256", f"strategy.epochs={args.epochs}", f"eval_every={k}",
                             f"eval_subset={subset}", "eval_initial=false", f"threads={args.threads}", f"seed={args.seed}",
                             f"output_dir={out}", "logging.progress=false", "logging.console=false",
                             "logging.plots=false", "logging.tensorboard=false"])
    res = run(cfg, f"{out}/k{k}-{subset}")
    t = res["timings"]
    ce = t.get("continual_eval_s", 0.0)
    return t["train_s"], t["train_s"] - ce, ce, len(res["continual_eval"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per experience (authors: 10)")
    p.add_argument("--subset", type=int, default=1000, help="test samples per task (authors: 1,000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny synthetic stand-in: checks the harness only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(("SYNTHETIC STAND-IN (--quick): " if args.quick else "") +
          f"Split-Fashion-MNIST, MLP 400-400, batch 256, {args.epochs} epoch(s) per experience, "
          f"{args.threads} thread(s)")
    print(f"{'k':>4s} {'per task':>9s} {'records':>8s} {'train s':>8s} {'eval s':>8s} {'eval/train':>11s} "
          f"{'loop vs k=0':>12s}")
    with tempfile.TemporaryDirectory() as out:
        base, _, _, _ = one(0, 0, args, out)
        print(f"{0:4d} {'-':>9s} {0:8d} {base:8.2f} {0:8.2f} {0:11.2f} {1:12.2f}")
        for k, subset in ((1, args.subset), (10, args.subset), (100, args.subset), (1, 0)):
            total, train, ce, n = one(k, subset, args, out)
            print(f"{k:4d} {subset or 'all':>9} {n:8d} {train:8.2f} {ce:8.2f} {ce / train:11.2f} {total / base:12.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
