"""Streaming image files: decoding the next batch in the background vs decoding in the loop.

``ImageFiles`` (the path used for collections too large to hold decoded, e.g. ImageNet-C) decodes
each batch of JPEGs when it is needed. With ``prefetch`` (the default) the next batch is decoded
in a background thread while the model works on the current one. This times, in one run: decoding
alone, the model alone, and the two together without and with prefetch (alternating, medians).
The ideal pipelined time is max(decode, model). Self-contained: it writes its own JPEGs
(``--size`` pixels square, random smooth content) to a temporary folder.

    python -m benchmarks.streaming_prefetch [--n 256] [--size 256] [--crop 224] [--batch 32] [--quick]
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from cl.models import build_model
from cl.config import ModelConfig
from scenarios.datasets import ImageFiles


def write_jpegs(folder, n, size, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((size, size), Image.BILINEAR)
        paths.append(os.path.join(folder, f"{i:05d}.jpg"))
        img.save(paths[-1], quality=90)
    return paths


def epoch(data, batch, model):
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in data.batches(batch):
            if model is not None:
                model(b.x)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=2, help="small_cnn width (sets the model's cost)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.size, args.crop, args.batch, args.repeats = 48, 64, 56, 16, 1
    torch.set_num_threads(args.threads)
    model = build_model(ModelConfig(name="small_cnn", args={"width": args.width}), 10,
                        (3, args.crop, args.crop)).eval()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.n, args.size)
        y = [0] * len(paths)
        streams = {k: ImageFiles(paths, y, resize=args.crop, crop=args.crop, prefetch=k) for k in (False, True)}
        x = torch.rand(args.batch, 3, args.crop, args.crop)
        n_batches = -(-args.n // args.batch)
        epoch(streams[True], args.batch, model)                   # warm-up (file cache, kernels)
        times = {"decode only": [], "model only": [], "no prefetch": [], "prefetch": []}
        for _ in range(args.repeats):
            times["decode only"].append(epoch(streams[False], args.batch, None))
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(n_batches):
                    model(x)
            times["model only"].append(time.perf_counter() - t0)
            times["no prefetch"].append(epoch(streams[False], args.batch, model))
            times["prefetch"].append(epoch(streams[True], args.batch, model))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.n} JPEGs {args.size}px -> {args.crop}px, batch {args.batch}, small_cnn width {args.width}, "
          f"{args.threads} torch thread(s), median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:<12s} {v:7.2f} s   {args.n / v:8.0f} images/s")
    ideal = max(med["decode only"], med["model only"])
    print(f"  prefetch speed-up {med['no prefetch'] / med['prefetch']:.2f}x "
          f"(ideal max(decode, model): {med['no prefetch'] / ideal:.2f}x)")
    return med


if __name__ == "__main__":
    main()
