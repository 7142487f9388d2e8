"""Profile the two hottest paths: an ER training run and a CoTTA adaptation run.

Each runs a few steps through the platform's own code (``Strategy.train_step`` fed by
``TensorData.batches`` for ER; ``Strategy.adapt`` for CoTTA) under ``torch.profiler`` (operator
self-time on the CPU) and ``cProfile`` (Python time per function). It prints the top operators
and the share of wall time spent in the platform's own Python files (cl/, strategies/,
scenarios/), which is the part this repository can make cheaper; the rest is PyTorch itself.

    python -m benchmarks.profile_hot_paths [--steps 20] [--threads 2] [--quick]
"""
import argparse
import cProfile
import os
import pstats
import time

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

from cl.augment import random_crop_flip
from cl.config import build_config
from cl.data import Experience, Scenario, TensorData
from cl.models import build_model
from cl.registry import STRATEGIES, load_builtins
from cl.strategy import StreamInfo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN = tuple(os.path.join(REPO, d) + os.sep for d in ("cl", "strategies", "scenarios"))


def make_strategy(name, model_name, model_args, strategy_cfg, data, protocol):
    cfg = build_config({"scenario": {"name": "synthetic_shift"}, "strategy": {"name": name, **strategy_cfg},
                        "model": {"name": model_name, "args": model_args}})
    scenario = Scenario("bench", [Experience(0, data, data, list(range(10)))], 10, (3, 32, 32), protocol=protocol)
    s = STRATEGIES.get(name)(build_model(cfg.model, 10, (3, 32, 32)), OmegaConf.to_object(cfg.strategy),
                             device="cpu", stream=StreamInfo.of(scenario, cfg.strategy.batch_size))
    s.setup(source=scenario.source)
    return s


def er_steps(n_steps):
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randint(0, 256, (32 * n_steps, 3, 32, 32), generator=g, dtype=torch.uint8),
                      torch.randint(0, 10, (32 * n_steps,), generator=g), transform=random_crop_flip(4))
    s = make_strategy("er", "resnet18_cifar", {"nf": 20}, {"buffer_size": 200, "batch_size": 32}, data, "train_eval")
    train = s.train_data(Experience(0, data, data, list(range(10))))
    for b in train.batches(32, shuffle=True, generator=g):      # warm-up: fills the buffer
        s.train_step(b)

    def work():
        for b in train.batches(32, shuffle=True, generator=g):
            s.train_step(b)
    return work


def cotta_steps(n_steps, batch):
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(batch, 3, 32, 32, generator=g) for _ in range(n_steps)]
    stream = TensorData(torch.cat(xs), torch.zeros(batch * n_steps, dtype=torch.long))
    s = make_strategy("cotta", "cifar_resnet20", {}, {"batch_size": batch}, stream, "online")
    s.adapt(xs[0])

    def work():
        for x in xs:
            s.adapt(x)
    return work


def report(name, work, top):
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work()
    wall_prof = time.perf_counter() - t0
    print(f"\n=== {name}: torch.profiler, top {top} operators by self CPU time ({wall_prof:.2f} s profiled) ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    work()
    pr.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(pr)
    own = sum(v[2] for k, v in stats.stats.items() if k[0].startswith(OWN))      # tottime in our files
    print(f"=== {name}: cProfile ({wall:.2f} s) -- Python self-time in cl/, strategies/, scenarios/: "
          f"{own:.3f} s = {100 * own / wall:.1f}% of wall ===")
    rows = sorted(((v[2], k) for k, v in stats.stats.items() if k[0].startswith(OWN)), reverse=True)[:8]
    for t, (f, line, fn) in rows:
        print(f"  {t:7.3f} s  {os.path.relpath(f, REPO)}:{line} {fn}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=200, help="CoTTA batch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.top = 2, 8, 5
    torch.set_num_threads(args.threads)
    load_builtins()
    report(f"ER, ResNet-18 nf=20, batch 32+32, {args.steps} steps", er_steps(args.steps), args.top)
    report(f"CoTTA, ResNet-20, batch {args.batch}, {max(args.steps // 4, 1)} batches",
           cotta_steps(max(args.steps // 4, 1), args.batch), args.top)


if __name__ == "__main__":
    main()
