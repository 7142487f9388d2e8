"""Throughput of scenarios.corruptions for CIFAR-10-C-sized generation.

Measures images/s per corruption at severity 5 on random 32x32 uint8 images
(or ``--size`` for other resolutions) and extrapolates the time needed for the
10,000-image CIFAR-10 test set (one severity).

    python benchmarks/corruption_throughput.py            # 1000 images
    python benchmarks/corruption_throughput.py --quick    # 64 images
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

try:
    from scenarios.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, corrupt
except ImportError:  # run as a script from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scenarios.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, corrupt


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="images per corruption (default 1000)")
    p.add_argument("--quick", action="store_true", help="use 64 images (smoke run)")
    p.add_argument("--size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--severity", type=int, default=5)
    p.add_argument("--batch", type=int, default=500, help="images per corrupt() call")
    p.add_argument("--extra", action="store_true", help="also time the 4 extra corruptions")
    shared_frost = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                "data", "frost")
    p.add_argument("--frost-dir", default=shared_frost if os.path.isdir(shared_frost) else None,
                   help="frost overlay folder (else $CL_FROST_DIR, else ../shared/data/frost when present); "
                   "frost is skipped when unavailable")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--dataset-size", type=int, default=10000, help="size to extrapolate to")
    args = p.parse_args(argv)
    n = 64 if args.quick else args.n
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, args.size, args.size), dtype=torch.uint8, generator=g)
    names = ALL_CORRUPTIONS if args.extra else CORRUPTIONS
    print(f"# {n} images of {args.size}x{args.size}, severity {args.severity}, "
          f"batch {args.batch}, torch threads {torch.get_num_threads()}")
    print("# wall = elapsed time; cpu = process CPU time over all threads (robust on a shared machine)")
    print(f"{'corruption':20s} {'images/s':>10s} {'s per ' + str(args.dataset_size):>12s} "
          f"{'cpu img/s':>10s} {'cpu s/' + str(args.dataset_size):>12s}")
    total = total_cpu = 0.0
    for name in names:
        t0 = time.perf_counter()
        c0 = time.process_time()
        try:
            for s in range(0, n, args.batch):
                chunk = x[s:s + args.batch]
                corrupt(chunk, name, args.severity, seed=0, frost_dir=args.frost_dir,
                        indices=range(s, s + len(chunk)))
        except FileNotFoundError as e:
            print(f"{name:20s} {'skipped':>10s}  ({str(e).split(';')[0]})")
            continue
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        est = dt / n * args.dataset_size
        cpu_est = cpu / n * args.dataset_size
        total += est
        total_cpu += cpu_est
        print(f"{name:20s} {n / dt:10.0f} {est:12.1f} {n / cpu:10.0f} {cpu_est:12.1f}")
    print(f"{'total (timed ones)':20s} {'':>10s} {total:12.1f} {'':>10s} {total_cpu:12.1f}")


if __name__ == "__main__":
    main()
