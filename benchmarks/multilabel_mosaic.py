"""Multi-label class-incremental learning on the CIFAR-10 mosaic STAND-IN: MULTI-LANE vs L2P,
DualPrompt, CODA-Prompt, finetune and ER; and MULTI-LANE's inference cost against the number of
pathways (tasks), next to L2P's.

STAND-IN, not a multi-label benchmark: 2x2 mosaics of real CIFAR-10 JPEG-copy images (tiles
downsized to 16x16, so 32x32 mosaics), targets = the multi-hot union of the tiles' classes; a tiny
ViT pretrained here (no pretrained ViT weights are reachable offline). The numbers are NOT
comparable to the paper's COCO/VOC ones (ViT-B/16 pretrained on ImageNet-21k, 224x224).

1. Pre-training: ``vit_tiny_cifar`` on ``--pretrain-images`` single-label CIFAR-10 training images
   (all 10 classes, 32x32; as ImageNet-21k covers COCO's classes), AdamW, a few epochs.
2. The stream: ``multilabel_split`` of ``cifar10_mosaic`` in tasks of 2 classes (B0-C2, 5 tasks),
   backbone loaded from step 1 (``model.checkpoint``), each strategy through ``cl.runner.run``.
3. Inference images/s of ``predict`` with 1, 4 and 8 pathways (MULTI-LANE) and of L2P, same
   images and batch, measured side by side in this process.

    python benchmarks/multilabel_mosaic.py --root ../shared/data/cifar10-jpeg --out /tmp/mlbench
"""
import argparse
import os
import time

import torch

from cl.config import load_config
from cl.registry import load_builtins
from cl.runner import build, run

MODEL = ["model.name=vit_tiny_cifar", "model.args.embed_dim=64", "model.args.depth=5", "model.args.num_heads=4",
         "model.normalize=[[0.5,0.5,0.5],[0.5,0.5,0.5]]"]
QUIET = ["logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false"]

STREAM = {  # label -> overrides; the authors' defaults otherwise, epochs cut for the CPU
    "multi_lane": ["strategy.name=multi_lane", "strategy.batch_size=32", "strategy.lr=0.00375"],  # 0.03 x 32/256 (main.py)
    "l2p": ["strategy.name=l2p"],
    "dualprompt": ["strategy.name=dualprompt", "strategy.pool_size=5"],          # one E-prompt per task
    "coda_prompt": ["strategy.name=coda_prompt", "strategy.pool_size=20", "strategy.batch_size=32"],
    "finetune": ["strategy.name=finetune", "strategy.optimizer=adam", "strategy.lr=0.0001", "strategy.batch_size=32"],
    "er": ["strategy.name=er", "strategy.optimizer=adam", "strategy.lr=0.0001", "strategy.batch_size=32",
           "strategy.minibatch_size=32", "strategy.buffer_size=200"],
}


def pretrain(root, n_images, epochs, out, threads):
    """Single-label pre-training of the tiny ViT on CIFAR-10 JPEG images; returns (checkpoint, test accuracy)."""
    from cl.data import TensorData
    from cl.models import build_model, unwrap
    from scenarios.image_files import decode_images, folder_samples
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = {}
    for split, n in (("train", n_images), ("test", max(n_images // 5, 200))):
        paths, labels, _ = folder_samples(os.path.join(root, split))
        pick = torch.randperm(len(paths), generator=g)[:n]
        data[split] = TensorData(decode_images([paths[i] for i in pick.tolist()]), torch.tensor(labels)[pick])
    cfg = load_config(None, ["name=p", "scenario.name=class_split", *MODEL, "strategy.name=finetune"])
    model = build_model(cfg.model, 10, (3, 32, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    from cl.augment import build_augmentation
    aug = build_augmentation("crop_flip")
    model.train()
    for _ in range(epochs):
        for b in data["train"].batches(64, shuffle=True, generator=g):
            loss = torch.nn.functional.cross_entropy(model(aug(b.x, g)), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(b.x).argmax(1) == b.y).sum()) for b in data["test"].batches(256))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "pretrained_vit.pt")
    torch.save(unwrap(model).state_dict(), path)
    return path, correct / len(data["test"])


def stream_overrides(args, label, checkpoint):
    return [f"name=ml_{label}", f"output_dir={args.out}", "eval_initial=false", "device=cpu", f"threads={args.threads}",
            "scenario.name=multilabel_split", "scenario.dataset=cifar10_mosaic", f"scenario.root={args.root}",
            f"scenario.n_train={args.n_train}", f"scenario.n_test={args.n_test}", "scenario.tile_size=16",
            "scenario.increment=2", *MODEL, f"model.checkpoint={checkpoint}", f"strategy.epochs={args.epochs}",
            *STREAM[label], *QUIET]


@torch.no_grad()
def inference_rate(strategy, x, batch, reps):
    """Images per second of ``strategy.predict`` on ``x`` in batches (best of ``reps`` passes)."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for k in range(0, len(x), batch):
            strategy.predict(x[k:k + batch])
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def scaling(args, checkpoint):
    """predict images/s of MULTI-LANE with 1, 4, 8 pathways and of L2P (same images, same batch)."""
    over = stream_overrides(args, "multi_lane", checkpoint) + ["strategy.num_tasks=8"]
    r = build(load_config(None, over))
    x = torch.cat([b.x for b in r.scenario.test_all.batches(256)])[:args.scaling_images]
    out = {}
    ml = r.strategy
    for k in (1, 4, 8):
        ml.task_classes = [[c % 10] for c in range(k)]      # k pathways begun (their classes only mask the logits)
        out[f"multi_lane_{k}"] = inference_rate(ml, x, args.scaling_batch, args.reps)
    l2p = build(load_config(None, stream_overrides(args, "l2p", checkpoint))).strategy
    l2p.seen = set(range(10))
    l2p.cfg.eval_batch_size = args.scaling_batch
    out["l2p"] = inference_rate(l2p, x, args.scaling_batch, args.reps)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg"))
    p.add_argument("--out", default="/tmp/multilabel_mosaic")
    p.add_argument("--pretrain-images", type=int, default=2000)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--strategies", nargs="*", default=list(STREAM), choices=list(STREAM))
    p.add_argument("--checkpoint", default="", help="reuse a pretrained_vit.pt (skips step 1)")
    p.add_argument("--scaling-images", type=int, default=256)
    p.add_argument("--scaling-batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args()
    load_builtins()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    if a.checkpoint:
        ckpt, acc = a.checkpoint, float("nan")
    else:
        ckpt, acc = pretrain(a.root, a.pretrain_images, a.pretrain_epochs, a.out, a.threads)
    print(f"pretrain: single-label test accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    for s in a.strategies:
        ts = time.perf_counter()
        res = run(load_config(None, stream_overrides(a, s, ckpt)), os.path.join(a.out, s))
        m, t = res["metrics"], res["timings"]
        n_img = res["epochs_per_experience"] * sum(len(e) for e in _train_sizes(a, ckpt))
        rows.append((s, m["map"], m["average_map"], m["cf1"], m["of1"], m["forgetting"], n_img / t["train_s"],
                     res["map_matrix"], time.perf_counter() - ts))
        print(rows[-1], flush=True)
    rates = scaling(a, ckpt)
    print(f"\npretrain accuracy {acc:.3f}; total {time.perf_counter() - t0:.0f} s\n")
    print("| strategy | final mAP | average mAP | CF1 | OF1 | forgetting (mAP matrix) | train images/s | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for s, fmap, amap, cf1, of1, fgt, ips, _, secs in rows:
        print(f"| {s} | {100 * fmap:.1f} | {100 * amap:.1f} | {100 * cf1:.1f} | {100 * of1:.1f} | {100 * fgt:.1f} | "
              f"{ips:.0f} | {secs:.0f} |")
    print("\n| predict | images/s | relative to L2P |\n|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {v:.0f} | {v / rates['l2p']:.2f} |")
    print("\nmAP matrices (rows: after task i):")
    for s, *_, M, _ in rows:
        print(s, " / ".join("[" + ", ".join(f"{100 * v:.1f}" for v in row) + "]" for row in M))


_SIZES = {}


def _train_sizes(a, ckpt):
    """The training sets of the stream (built once; the same for every strategy)."""
    if "exps" not in _SIZES:
        r = build(load_config(None, stream_overrides(a, "finetune", ckpt)))
        _SIZES["exps"] = [e.train for e in r.scenario.experiences]
    return _SIZES["exps"]


if __name__ == "__main__":
    main()
