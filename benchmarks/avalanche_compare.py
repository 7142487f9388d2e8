"""ER on our platform vs Avalanche's Replay plugin: accuracy over seeds and training wall time.

Same model and initial weights, same data and class order (5 experiences x 2 classes), same
batch size (32 current + 32 replayed), epochs, optimizer (plain SGD) and buffer size, reservoir
storage, CPU, one thread. Two regimes:

- ``mlp``: scikit-learn's 8x8 digits and a small MLP -- overhead-bound (the framework's per-step
  cost dominates, as for small models on a GPU);
- ``resnet``: 3x32x32 synthetic class-prototype images (``synthetic`` adapter style) and the
  reduced-width CIFAR ResNet-18 (nf=20) -- compute-bound.

Ours runs through ``cl.runner.run`` (strategy ``er``); the wall time is the runner's ``train_s``
(training plus the experience-end hooks; evaluation excluded). Avalanche runs ``Naive`` with
``ReplayPlugin(storage_policy=ReservoirSamplingBuffer)``; the wall time is the sum of its
``train()`` calls. Both are scored by one plain evaluation loop (class-IL accuracy on all test
data after the last experience). Differences that remain, by design of each library: Avalanche
updates its buffer once per experience end (ours after every step, Chaudhry et al.), so its first
experience has no replay; the shuffling RNGs differ.

    python -m benchmarks.avalanche_er [--seeds 0 1 2] [--regimes mlp resnet]
"""
import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

from cl.config import build_config
from cl.registry import MODELS, load_builtins
from cl.runner import run

REGIMES = {
    # dataset, model, model args, epochs, lr, buffer
    "mlp": dict(model="mlp", args={"hidden": 100}, epochs=5, lr=0.1, buffer=200),
    "resnet": dict(model="resnet18_cifar", args={"nf": 20}, epochs=1, lr=0.1, buffer=200),
}


def digits_arrays():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.round(d.images / 16.0 * 255).astype(np.uint8)[:, None]            # [N, 1, 8, 8] uint8
    perm = np.random.RandomState(1234).permutation(len(x))
    te, tr = perm[:540], perm[540:]
    return x[tr], d.target[tr], x[te], d.target[te]


def synthetic_arrays(n_train=60, n_test=30, shape=(3, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed + 99)
    protos = torch.rand(10, *shape, generator=g)

    def draw(n):
        y = torch.arange(10).repeat_interleave(n)
        x = (protos[y] + 0.3 * torch.randn(len(y), *shape, generator=g)).clamp(0, 1)
        return (x * 255).round().to(torch.uint8).numpy(), y.numpy()

    return (*draw(n_train), *draw(n_test))


@torch.no_grad()
def class_il_accuracy(model, x, y):
    model.eval()
    pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def run_ours(npz, reg, seed, tmp):
    cfg = build_config({
        "name": f"ours_{seed}", "seed": seed, "device": "cpu", "threads": 1, "eval_initial": False,
        "output_dir": tmp, "save_model": True,
        "scenario": {"name": "class_split", "dataset": "npz", "root": npz, "n_experiences": 5},
        "model": {"name": reg["model"], "args": reg["args"]},
        "strategy": {"name": "er", "lr": reg["lr"], "batch_size": 32, "minibatch_size": 32,
                     "epochs": reg["epochs"], "buffer_size": reg["buffer"]},
        "logging": {"tensorboard": False, "plots": False, "progress": False, "console": False}})
    d = os.path.join(tmp, f"ours_{seed}")
    res = run(cfg, d)
    return res["timings"]["train_s"], torch.load(os.path.join(d, "model.pt"), weights_only=True)


def run_avalanche(arrays, model, reg, seed):
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensor_dataset
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    xtr, ytr, xte, yte = arrays
    train = tensor_dataset(torch.from_numpy(xtr).float() / 255, torch.from_numpy(ytr).long())
    test = tensor_dataset(torch.from_numpy(xte).float() / 255, torch.from_numpy(yte).long())
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, fixed_class_order=list(range(10)), seed=seed)
    torch.manual_seed(seed)
    replay = ReplayPlugin(mem_size=reg["buffer"], batch_size=32, batch_size_mem=32,
                          storage_policy=ReservoirSamplingBuffer(reg["buffer"]))
    strat = Naive(model, torch.optim.SGD(model.parameters(), lr=reg["lr"]), torch.nn.CrossEntropyLoss(),
                  train_mb_size=32, train_epochs=reg["epochs"], eval_mb_size=256, device="cpu",
                  plugins=[replay], evaluator=EvaluationPlugin(loggers=[]))
    t = 0.0
    for exp in bm.train_stream:
        t0 = time.perf_counter()
        strat.train(exp, num_workers=0)
        t += time.perf_counter() - t0
    return t, model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    args = p.parse_args(argv)
    load_builtins()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.regimes:
            reg = REGIMES[name]
            arrays = digits_arrays() if name == "mlp" else synthetic_arrays()
            npz = os.path.join(tmp, f"{name}.npz")
            np.savez(npz, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
            xte, yte = torch.from_numpy(arrays[2]).float() / 255, torch.from_numpy(arrays[3]).long()
            ours_acc, av_acc, ratios, ours_t, av_t = [], [], [], [], []
            for seed in args.seeds:
                torch.manual_seed(seed)
                net = MODELS.get(reg["model"])(num_classes=10, input_shape=tuple(arrays[0].shape[1:]), **reg["args"])
                init = copy.deepcopy(net.state_dict())
                t_ours, state = run_ours(npz, reg, seed, os.path.join(tmp, name))
                net.load_state_dict(state)
                ours_acc.append(class_il_accuracy(net, xte, yte))
                net.load_state_dict(init)                       # Avalanche starts from the same weights
                t_av, net = run_avalanche(arrays, net, reg, seed)
                av_acc.append(class_il_accuracy(net, xte, yte))
                ours_t.append(t_ours)
                av_t.append(t_av)
                ratios.append(t_av / t_ours)
                print(f"{name} seed {seed}: ours {100 * ours_acc[-1]:.1f}% {t_ours:.2f}s | "
                      f"avalanche {100 * av_acc[-1]:.1f}% {t_av:.2f}s | speed-up {t_av / t_ours:.2f}x", flush=True)
            table.append((name, ours_acc, av_acc, ours_t, av_t, ratios))
    print("\n| regime | ours class-IL acc | Avalanche class-IL acc | ours train time | Avalanche train time | "
          "speed-up (Avalanche / ours) |\n|---|---|---|---|---|---|")
    for name, oa, aa, ot, at, r in table:
        ms = lambda v: f"{100 * statistics.mean(v):.1f} ± {100 * statistics.pstdev(v):.1f}"  # noqa: E731
        print(f"| {name} | {ms(oa)} | {ms(aa)} | {statistics.median(ot):.2f} s | {statistics.median(at):.2f} s | "
              f"{statistics.median(r):.2f}x (median of {len(r)}) |")
    return table


if __name__ == "__main__":
    main()
