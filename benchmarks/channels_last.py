"""ResNet-20 inference throughput on CPU: default (NCHW) vs channels_last memory format.

Same weights, same input batch (200 images 3x32x32, the TTA batch size), eval mode, no_grad.
The two layouts alternate (default, channels_last, default, ...) and the median images/s of
each are compared. ``model.channels_last=true`` is the platform switch for the second layout.

    python -m benchmarks.channels_last [--threads 2] [--batch 200] [--repeats 7] [--model cifar_resnet20] [--quick]
"""
import argparse
import statistics
import time

import torch

from cl.config import ModelConfig
from cl.models import build_model


def throughput(net, x, iters):
    """(images per wall-clock second, images per process-CPU second) of ``iters`` forward passes.

    The CPU-time rate is less sensitive to other processes competing for the cores (with
    ``--threads 1`` it is the single-core speed); the wall-clock rate is what a user sees.
    """
    with torch.no_grad():
        net(x)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(iters):
            net(x)
        n = iters * len(x)
        return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--iters", type=int, default=10, help="forward passes per measurement")
    p.add_argument("--repeats", type=int, default=7, help="alternating measurements per layout")
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--quick", action="store_true", help="batch 16, 2 x 2 passes (harness check)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.iters, args.repeats = 16, 2, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = {"default": build_model(ModelConfig(name=args.model), 10, (3, 32, 32)).eval()}
    nets["channels_last"] = build_model(ModelConfig(name=args.model, channels_last=True), 10, (3, 32, 32)).eval()
    nets["channels_last"].load_state_dict(nets["default"].state_dict())
    batch = torch.rand(args.batch, 3, 32, 32)     # NCHW input for both, as the runner feeds it
    x = {"default": batch, "channels_last": batch}
    with torch.no_grad():
        assert torch.allclose(nets["default"](x["default"]), nets["channels_last"](x["channels_last"]), atol=1e-4)
    wall, cpu = {k: [] for k in nets}, {k: [] for k in nets}
    for _ in range(args.repeats):
        for k in nets:
            w, c = throughput(nets[k], x[k], args.iters)
            wall[k].append(w)
            cpu[k].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, torch {torch.__version__}, "
          f"median of {args.repeats} x {args.iters} forward passes")
    for k in nets:
        print(f"  {k:14s} {med[k]:8.0f} images/s wall (min {min(wall[k]):.0f}, max {max(wall[k]):.0f})"
              f"   {med_cpu[k]:8.0f} images per CPU-second")
    print(f"  channels_last / default: {med['channels_last'] / med['default']:.2f}x wall, "
          f"{med_cpu['channels_last'] / med_cpu['default']:.2f}x CPU time")
    return med, med_cpu


if __name__ == "__main__":
    main()
