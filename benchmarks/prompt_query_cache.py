"""Training throughput of L2P on the tiny ViT with and without the frozen-query cache.

Without the cache every training step runs the frozen ViT once more to get the [CLS] query;
with it the query of each image is computed once per experience (one no-grad pass, included in
the timing) and looked up by sample index. Both runs start from the same weights and data.
Also times the alternative key considered, a content hash of each uint8 image (blake2b).

    python benchmarks/prompt_query_cache.py --epochs 5 --n 512
"""
import argparse
import hashlib
import time

import torch

from cl.config import load_config
from cl.runner import build


def throughput(cache, args):
    cfg = load_config(None, [
        "device=cpu", f"threads={args.threads}", "scenario.name=class_split", "scenario.dataset=synthetic",
        "scenario.dataset_args.shape=[3,32,32]", f"scenario.dataset_args.n_train={args.n // 10}",
        "scenario.n_experiences=1", "model.name=vit_tiny_cifar", "strategy.name=l2p",
        f"strategy.query_cache={str(cache).lower()}", f"strategy.batch_size={args.batch_size}"])
    built = build(cfg)
    scenario, strategy, device = built.scenario, built.strategy, built.device
    exp = scenario.experiences[0]
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    strategy.before_experience(exp)
    data = strategy.train_data(exp)                         # fills the cache (timed)
    for _ in range(args.epochs):
        for batch in data.batches(args.batch_size, shuffle=True, generator=gen, device=device):
            strategy.train_step(batch)
    return args.epochs * len(exp.train) / (time.perf_counter() - t0)


def hash_cost(args):
    """Seconds per batch to hash every uint8 image of a batch (the content-hash alternative)."""
    x = (torch.rand(args.batch_size, 3, 32, 32) * 255).to(torch.uint8)
    t0 = time.perf_counter()
    for _ in range(50):
        keys = [hashlib.blake2b(img.numpy().tobytes(), digest_size=16).digest() for img in x]
    return (time.perf_counter() - t0) / 50, len(keys)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512, help="training images (10 classes)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    without = throughput(False, args)
    with_cache = throughput(True, args)
    per_batch, _ = hash_cost(args)
    print(f"tiny ViT (embed 64, depth 5, 32x32, patch 4), L2P, batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.n} images, {args.threads} threads")
    print("| query | images/s |\n|---|---|")
    print(f"| recomputed every step | {without:.1f} |\n| cached per image | {with_cache:.1f} |")
    print(f"speed-up: {with_cache / without:.2f}x")
    print(f"content hash of a batch of {args.batch_size} uint8 images: {per_batch * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
