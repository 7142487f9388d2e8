"""Scale figures of data-parallel runs (cl/distributed.py).

Part 1, computed (no run): what one training step all-reduces for the documented models: the
trained parameters' gradients (float32), in bytes per step, the traffic each rank sends with a ring
all-reduce (2 (N-1)/N times the gradient bytes) and the time that takes at two stated link speeds
(NVLink-class 400 GB/s, PCIe-4-class 25 GB/s per GPU) -- a lower bound that ignores latency and
overlap. A prompt method trains only its prompts and head, so its traffic is that of those.
The gathered outputs (batch x classes floats per model call) are negligible next to it.

Part 2, measured: the same run with 1 and with 2 gloo ranks on this CPU (torchrun, one thread per
rank), wall time of the run and whether the accuracy matrices are equal.

    python -m benchmarks.distributed_scale [--quick] [--skip-runs]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from cl.registry import MODELS, load_builtins

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINKS = {"NVLink 400 GB/s": 400e9, "PCIe 25 GB/s": 25e9}
# (label, model name, builder args, input shape, classes, which parameters train: "all" | "prompt")
MODELS_DOC = [
    ("mlp (quickstart)", "mlp", {"hidden": 128}, (1, 8, 8), 10, "all"),
    ("cifar_resnet20", "cifar_resnet20", {}, (3, 32, 32), 10, "all"),
    ("resnet18_cifar", "resnet18_cifar", {}, (3, 32, 32), 100, "all"),
    ("vit_tiny_cifar", "vit_tiny_cifar", {}, (3, 32, 32), 100, "all"),
    ("gpt nano", "gpt", {"size": "nano"}, (256,), 256, "all"),
    ("gpt small (GPT-2 124M shape)", "gpt", {"size": "small"}, (1024,), 50257, "all"),
]
VIT_B = 85_800_000            # ViT-B/16 backbone parameters (timm vit_base_patch16_224), for the prompt rows


def volume_rows():
    rows = []
    for label, name, args, shape, classes, _ in MODELS_DOC:
        model = MODELS.get(name)(num_classes=classes, input_shape=shape, **args)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append((label, n, n * 4))
    # L2P on ViT-B/16 (authors' defaults): pool 10 x length 5 x 768 prompts + 10 keys x 768 + head 768 x 100
    l2p = 10 * 5 * 768 + 10 * 768 + 768 * 100 + 100
    rows.append(("l2p on ViT-B/16 (prompts+head trained)", l2p, l2p * 4))
    rows.append(("finetune ViT-B/16 (all trained)", VIT_B + 768 * 100, (VIT_B + 768 * 100) * 4))
    return rows


def print_volume():
    print("Gradient all-reduce per training step (float32 gradients of the trained parameters):")
    head = " | ".join(f"ring 8 ranks @ {k}" for k in LINKS)
    print(f"| model | trained params | gradient MB/step | sent per rank, 2 ranks (MB) | {head} |")
    print("| --- | ---: | ---: | ---: |" + " ---: |" * len(LINKS))
    out = []
    for label, n, b in volume_rows():
        ring2, ring8 = b * 2 * 1 / 2, b * 2 * 7 / 8
        times = " | ".join(f"{1e3 * ring8 / bw:.3f} ms" for bw in LINKS.values())
        print(f"| {label} | {n:,} | {b / 1e6:.2f} | {ring2 / 1e6:.2f} | {times} |")
        out.append({"model": label, "params": n, "grad_bytes": b})
    return out


def run_ranks(nproc, jobs, out):
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "tests", "_distributed_worker.py"), jobs, out]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])


def measure(quick):
    n_train = 40 if quick else 600
    base = ["scenario.name=class_split", "scenario.dataset=synthetic", "scenario.dataset_args.num_classes=4",
            f"scenario.dataset_args.n_train={n_train}", "scenario.dataset_args.n_test=50", "scenario.n_experiences=2",
            "strategy.batch_size=64", "eval_initial=false", "threads=1", "device=cpu", "logging.tensorboard=false",
            "logging.plots=false", "logging.progress=false", "logging.console=false"]
    cases = {"finetune_mlp": ["strategy.name=finetune", "model.name=mlp", "model.args.hidden=512"],
             "er_vit_tiny": ["strategy.name=er", "model.name=vit_tiny_cifar", "model.args.depth=2"]}
    if quick:
        cases = {"finetune_mlp": cases["finetune_mlp"]}
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for nproc in (1, 2):
            out = os.path.join(d, f"n{nproc}")
            os.makedirs(out)
            jobs = [{"key": k, "overrides": [f"name={k}", f"output_dir={out}", *base, *v]} for k, v in cases.items()]
            with open(os.path.join(out, "jobs.json"), "w") as f:
                json.dump(jobs, f)
            run_ranks(nproc, os.path.join(out, "jobs.json"), out)
            for k in cases:
                with open(os.path.join(out, f"{k}.json")) as f:
                    results[(k, nproc)] = json.load(f)
    print("\n1 vs 2 gloo ranks on this CPU (one thread per rank; wall time of the run itself):")
    print("| run | 1 rank (s) | 2 ranks (s) | speed-up | accuracy matrices equal |")
    print("| --- | ---: | ---: | ---: | --- |")
    for k in cases:
        a, b = results[(k, 1)], results[(k, 2)]
        print(f"| {k} | {a['wall_s']:.1f} | {b['wall_s']:.1f} | {a['wall_s'] / b['wall_s']:.2f}x | {a['R'] == b['R']} |")
    return {f"{k}/{n}": v for (k, n), v in results.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-runs", action="store_true", help="only the computed communication volumes")
    args = p.parse_args(argv)
    load_builtins()
    torch.manual_seed(0)
    print_volume()
    if not args.skip_runs:
        measure(args.quick)


if __name__ == "__main__":
    main()
