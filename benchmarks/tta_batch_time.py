"""Seconds per batch of each test-time adaptation method (ResNet-20, random 32x32 batches).

Every registered online method among source, bn, tent, mean_teacher, cotta, rmt adapts on the
same batches (predict-then-adapt, through Strategy.adapt); the time per batch and its ratio to
`source` are printed. Pretrained weights are not needed for timing.

    python -m benchmarks.tta_batch_time [--quick] [--batch 200] [--channels-last]
"""
import argparse
import statistics
import time

import torch

from cl.config import build_config
from cl.data import Experience, Scenario, TensorData
from cl.models import build_model
from cl.registry import STRATEGIES, load_builtins
from cl.strategy import StreamInfo
from omegaconf import OmegaConf

METHODS = ["source", "bn", "tent", "mean_teacher", "cotta", "rmt"]


def time_method(name, batches, source, args, **extra):
    strategy_cfg = {"name": name, "batch_size": args.batch, **extra}
    if name == "cotta":  # views on every batch, as on real corrupted data (the anchor is rarely >= ap
        strategy_cfg["ap"] = 1.0  # there); random inputs can make a random-init anchor overconfident
    if name == "rmt":  # its source warm-up (50,000 samples) runs once in setup, not per batch
        strategy_cfg["warmup_samples"] = 0 if args.quick else 4 * args.batch
    cfg = build_config({"scenario": {"name": "synthetic_shift"}, "strategy": strategy_cfg,
                        "model": {"name": args.model, "channels_last": args.channels_last}})
    scenario = Scenario("bench", [Experience(0, None, source, list(range(10)))], 10, (3, 32, 32),
                        protocol="online", source=source)
    model = build_model(cfg.model, 10, (3, 32, 32))
    strategy = STRATEGIES.get(name)(model, OmegaConf.to_object(cfg.strategy), device="cpu",
                                    stream=StreamInfo.of(scenario, cfg.strategy.batch_size))
    strategy.setup(source=scenario.source)
    strategy.adapt(batches[0])  # warm-up (and RMT's source warm-up, if configured)
    times = []
    for x in batches:
        t0 = time.perf_counter()
        strategy.adapt(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--methods", nargs="+", default=METHODS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.batches = 16, 2
    torch.set_num_threads(args.threads)
    load_builtins()
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(args.batch, 3, 32, 32, generator=g) for _ in range(args.batches)]
    source = TensorData(torch.randint(0, 256, (4 * args.batch, 3, 32, 32), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (4 * args.batch,), generator=g))
    methods = [m for m in args.methods if m in STRATEGIES.names()]
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, median of {args.batches} batches"
          f"{', channels_last' if args.channels_last else ''}")
    base = None
    for m in methods:
        s = time_method(m, batches, source, args)
        base = base or s
        print(f"  {m:<14s} {s:8.3f} s/batch   {s / base:6.1f}x source")
        if m == "cotta":   # the 32 views: one forward per view (CPU default) vs one batched pass
            b = time_method(m, batches, source, args, views_per_forward=32)
            print(f"  {'cotta, views batched':<14s} {b:8.3f} s/batch   {b / base:6.1f}x source "
                  f"({b / s:.2f}x the per-view passes; views_per_forward=32, per-view BN statistics)")


if __name__ == "__main__":
    main()
