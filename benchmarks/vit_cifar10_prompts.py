"""Prompt strategies on a small ViT pretrained here on CIFAR-10 (JPEG copy) classes 0-4.

No pretrained ViT weights are reachable offline, so this example makes its own backbone:
1. supervised pre-training with the platform's own entry point (a 1-experience class_split of
   classes 0-4 + finetune, save_model=true -> model.pt);
2. the other five classes (5-9) as a class-incremental stream of two experiences ({5,6,7}, {8,9})
   on that frozen backbone (model.checkpoint=.../model.pt) with L2P, DualPrompt, CODA-Prompt,
   LAE (adapter, prefix, LoRA), NMC (if registered) and finetune.
The numbers are NOT comparable to the papers' (a tiny ViT trained from scratch on 2,500-5,000
images versus ViT-B/16 pretrained on ImageNet-21k).

    python benchmarks/vit_cifar10_prompts.py --root ../shared/data/cifar10-jpeg --out /tmp/vitbench
"""
import argparse
import os
import time

from cl.config import load_config
from cl.registry import STRATEGIES, load_builtins
from cl.runner import run

MODEL = ["model.name=vit_tiny_cifar", "model.args.embed_dim=96", "model.args.depth=6", "model.args.num_heads=3",
         "model.normalize=[[0.5,0.5,0.5],[0.5,0.5,0.5]]"]
QUIET = ["logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false"]


def pretrain_overrides(root, out, fraction, epochs):
    return ["name=pretrain_c0-4", f"output_dir={out}", "save_model=true", "test_subsample=0.2", "eval_initial=false",
            "scenario.name=class_split", "scenario.dataset=imagefolder", f"scenario.root={root}",
            "scenario.classes=[0,1,2,3,4]", "scenario.n_experiences=1", f"scenario.train_fraction={fraction}",
            "scenario.augment=crop_flip", *MODEL, "strategy.name=finetune", "strategy.optimizer=adamw",
            "strategy.lr=0.001", "strategy.weight_decay=0.05", "strategy.batch_size=64", f"strategy.epochs={epochs}", *QUIET]


STREAM = {  # label -> (strategy, overrides); paper defaults otherwise, epochs cut for CPU
    "l2p": ("l2p", ["strategy.epochs=1"]),
    "dualprompt": ("dualprompt", ["strategy.epochs=1", "strategy.pool_size=2"]),
    "coda_prompt": ("coda_prompt", ["strategy.epochs=1", "strategy.pool_size=20", "strategy.batch_size=32"]),
    "lae": ("lae", ["strategy.epochs=1", "strategy.freeze_epochs=0"]),
    "lae_prefix": ("lae", ["strategy.epochs=1", "strategy.freeze_epochs=0", "strategy.pet=prefix"]),
    "lae_lora": ("lae", ["strategy.epochs=1", "strategy.freeze_epochs=0", "strategy.pet=lora"]),
    "nmc": ("nmc", []),
    "finetune": ("finetune", ["strategy.epochs=1", "strategy.optimizer=adam", "strategy.lr=0.0001",
                              "strategy.batch_size=32"]),
}


def stream_overrides(root, out, checkpoint, fraction, label):
    strategy, extra = STREAM[label]
    return [f"name=stream_{label}", f"output_dir={out}", "test_subsample=0.2", "eval_initial=false",
            "scenario.name=class_split", "scenario.dataset=imagefolder", f"scenario.root={root}",
            "scenario.classes=[5,6,7,8,9]", "scenario.n_experiences=2", "scenario.first_classes=3",
            f"scenario.train_fraction={fraction}", *MODEL, f"model.checkpoint={checkpoint}",
            f"strategy.name={strategy}", *extra, *QUIET]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg"))
    p.add_argument("--out", default="/tmp/vit_cifar10_prompts")
    p.add_argument("--pretrain-fraction", type=float, default=0.1)  # of the 50k train images: 500 per class
    p.add_argument("--pretrain-epochs", type=int, default=5)
    p.add_argument("--stream-fraction", type=float, default=0.1)
    p.add_argument("--strategies", nargs="*", default=list(STREAM), choices=list(STREAM))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", default="", help="reuse a pretrained model.pt (skips step 1)")
    a = p.parse_args()
    load_builtins()
    t0 = time.perf_counter()
    threads = [f"threads={a.threads}", "device=cpu"]
    if a.checkpoint:
        ckpt, pre_acc = a.checkpoint, float("nan")
    else:
        pre = run(load_config(None, pretrain_overrides(a.root, a.out, a.pretrain_fraction, a.pretrain_epochs) + threads),
                  os.path.join(a.out, "pretrain"))
        ckpt, pre_acc = os.path.join(a.out, "pretrain", "model.pt"), pre["accuracy_matrix"][-1][0]
    print(f"pretrain: accuracy on classes 0-4 = {pre_acc:.3f} ({time.perf_counter() - t0:.0f} s)")
    rows = []
    for s in a.strategies:
        if STREAM[s][0] not in STRATEGIES.names():
            print(f"skip {s}: not registered")
            continue
        ts = time.perf_counter()
        r = run(load_config(None, stream_overrides(a.root, a.out, ckpt, a.stream_fraction, s) + threads),
                os.path.join(a.out, s))
        m = r["metrics"]
        rows.append((s, m.get("average_accuracy", float("nan")), m.get("forgetting", float("nan")),
                     r["accuracy_matrix"], time.perf_counter() - ts))
        print(rows[-1])
    print(f"\npretrain accuracy (classes 0-4, test subsample 0.2): {pre_acc:.3f}; "
          f"total {time.perf_counter() - t0:.0f} s\n")
    print("| strategy | final average accuracy | forgetting | accuracy matrix | time (s) |")
    print("|---|---|---|---|---|")
    for s, acc, fgt, R, secs in rows:
        mat = " / ".join("[" + ", ".join(f"{v:.3f}" for v in row) + "]" for row in R)
        print(f"| {s} | {acc:.3f} | {fgt:.3f} | {mat} | {secs:.0f} |")


if __name__ == "__main__":
    main()
