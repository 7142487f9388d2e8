"""Our finetune and ER against Avalanche's Naive and Replay (and a bare PyTorch loop): accuracy, time.

Same model and initial weights, same data and class order (5 experiences x 2 classes), same
batch size (32, plus 32 replayed for ER), epochs, optimizer (plain SGD) and buffer size (reservoir
storage), CPU, one thread. Two regimes:

- ``mlp``: scikit-learn's 8x8 digits and a small MLP -- overhead-bound (the framework's per-step
  cost dominates, as for small models on a GPU);
- ``resnet``: 3x32x32 synthetic class-prototype images (``synthetic`` adapter style) and the
  reduced-width CIFAR ResNet-18 (nf=20) -- compute-bound.

Ours runs through ``cl.runner.run`` (strategy ``finetune`` / ``er``; ``er`` feeds its buffer
after every step as Mammoth does, ``er_exp`` is ``er`` with ``buffer_update=experience``, the
buffer protocol of Avalanche's ReplayPlugin, i.e. the same experiment); the wall time is the
runner's ``train_s`` (training plus the experience-end hooks; evaluation excluded). Avalanche runs
``Naive`` (finetune) or ``Naive`` with ``ReplayPlugin(storage_policy=ReservoirSamplingBuffer)``;
the wall time is the sum of its ``train()`` calls. The bare loop (finetune only) is the loop a
researcher would write by hand over the same uint8 tensors. Everything is scored by one plain
evaluation loop (class-IL accuracy on all test data after the last experience). The shuffling
RNGs of the two libraries differ.

    python -m benchmarks.avalanche_compare [--strategies finetune er er_exp] [--seeds 0 1 2] [--regimes mlp resnet]
        [--epochs N]
    python -m benchmarks.avalanche_compare --quick      # harness check: one seed, mlp, 1 epoch
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


# label -> our strategy overrides; Avalanche runs Naive (+ ReplayPlugin for the er rows)
OURS = {"finetune": {"name": "finetune"},
        "er": {"name": "er", "buffer_update": "step"},                 # Mammoth/Chaudhry: buffer fed every step
        "er_exp": {"name": "er", "buffer_update": "experience"}}      # Avalanche's protocol: at experience end


def run_ours(npz, reg, strategy, seed, tmp):
    extra = {"minibatch_size": 32, "buffer_size": reg["buffer"]} if strategy.startswith("er") else {}
    cfg = build_config({
        "name": f"{strategy}_{seed}", "seed": seed, "device": "cpu", "threads": 1, "eval_initial": False,
        "output_dir": tmp, "save_model": True,
        "scenario": {"name": "class_split", "dataset": "npz", "root": npz, "n_experiences": 5},
        "model": {"name": reg["model"], "args": reg["args"]},
        "strategy": {**OURS[strategy], "lr": reg["lr"], "batch_size": 32, "epochs": reg["epochs"], **extra},
        "logging": {"tensorboard": False, "plots": False, "progress": False, "console": False}})
    d = os.path.join(tmp, f"{strategy}_{seed}")
    res = run(cfg, d)
    return res["timings"]["train_s"], torch.load(os.path.join(d, "model.pt"), weights_only=True)


def run_avalanche(arrays, model, reg, strategy, seed):
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
    plugins = []
    if strategy.startswith("er"):
        plugins.append(ReplayPlugin(mem_size=reg["buffer"], batch_size=32, batch_size_mem=32,
                                    storage_policy=ReservoirSamplingBuffer(reg["buffer"])))
    strat = Naive(model, torch.optim.SGD(model.parameters(), lr=reg["lr"]), torch.nn.CrossEntropyLoss(),
                  train_mb_size=32, train_epochs=reg["epochs"], eval_mb_size=256, device="cpu",
                  plugins=plugins, evaluator=EvaluationPlugin(loggers=[]))
    t = 0.0
    for exp in bm.train_stream:
        t0 = time.perf_counter()
        strat.train(exp, num_workers=0)
        t += time.perf_counter() - t0
    return t, model


def run_bare(arrays, model, reg, seed):
    """Finetune written by hand (``runner_overhead.bare_loop``) over the 5 experiences in turn."""
    from benchmarks.runner_overhead import bare_loop
    xtr, ytr = torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]).long()
    opt = torch.optim.SGD(model.parameters(), lr=reg["lr"])
    g = torch.Generator().manual_seed(seed)
    t = 0.0
    for c in range(0, 10, 2):
        idx_c = torch.nonzero((ytr == c) | (ytr == c + 1)).flatten()
        t += bare_loop(model, xtr[idx_c], ytr[idx_c], 32, reg["epochs"], reg["lr"], generator=g, opt=opt)
    return t, model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", nargs="+", default=list(OURS), choices=list(OURS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    p.add_argument("--epochs", type=int, default=None, help="override every regime's epochs (mlp: 5, resnet: 1)")
    p.add_argument("--quick", action="store_true", help="one seed, the mlp regime, 1 epoch (harness check)")
    args = p.parse_args(argv)
    try:
        import avalanche  # noqa: F401
    except ImportError:
        print("skipped: Avalanche is not installed (pip install -e '.[avalanche]')")
        return None
    regimes = {k: dict(v) for k, v in REGIMES.items()}
    for reg in regimes.values():
        reg["epochs"] = args.epochs or reg["epochs"]
    if args.quick:
        args.seeds, args.regimes = args.seeds[:1], ["mlp"]
        regimes["mlp"]["epochs"] = 1
    load_builtins()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.regimes:
            reg = regimes[name]
            arrays = digits_arrays() if name == "mlp" else synthetic_arrays()
            npz = os.path.join(tmp, f"{name}.npz")
            np.savez(npz, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
            xte, yte = torch.from_numpy(arrays[2]).float() / 255, torch.from_numpy(arrays[3]).long()
            for strategy in args.strategies:
                acc = {"ours": [], "avalanche": [], "bare": []}
                secs = {"ours": [], "avalanche": [], "bare": []}
                for seed in args.seeds:
                    torch.manual_seed(seed)
                    net = MODELS.get(reg["model"])(num_classes=10, input_shape=tuple(arrays[0].shape[1:]),
                                                   **reg["args"])
                    init = copy.deepcopy(net.state_dict())
                    t, state = run_ours(npz, reg, strategy, seed, os.path.join(tmp, name))
                    net.load_state_dict(state)
                    acc["ours"].append(class_il_accuracy(net, xte, yte))
                    secs["ours"].append(t)
                    net.load_state_dict(init)                       # Avalanche starts from the same weights
                    t, net = run_avalanche(arrays, net, reg, strategy, seed)
                    acc["avalanche"].append(class_il_accuracy(net, xte, yte))
                    secs["avalanche"].append(t)
                    if strategy == "finetune":
                        net.load_state_dict(init)
                        t, net = run_bare(arrays, net, reg, seed)
                        acc["bare"].append(class_il_accuracy(net, xte, yte))
                        secs["bare"].append(t)
                    line = " | ".join(f"{k} {100 * acc[k][-1]:.1f}% {secs[k][-1]:.2f}s" for k in acc if acc[k])
                    print(f"{name} {strategy} seed {seed}: {line} | "
                          f"speed-up {secs['avalanche'][-1] / secs['ours'][-1]:.2f}x", flush=True)
                table.append((name, strategy, acc, secs))
    print("\n| regime | strategy | ours class-IL acc | Avalanche class-IL acc | ours train time | "
          "Avalanche train time | speed-up (Avalanche / ours) | bare loop time | ours / bare |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, strategy, acc, secs in table:
        ms = lambda v: f"{100 * statistics.mean(v):.1f} ± {100 * statistics.pstdev(v):.1f}"  # noqa: E731
        med = {k: statistics.median(v) for k, v in secs.items() if v}
        ratios = [a / o for a, o in zip(secs["avalanche"], secs["ours"])]
        bare = (f"{med['bare']:.2f} s | {med['ours'] / med['bare']:.2f}x" if "bare" in med else "- | -")
        print(f"| {name} | {strategy} | {ms(acc['ours'])} | {ms(acc['avalanche'])} | {med['ours']:.2f} s | "
              f"{med['avalanche']:.2f} s | {statistics.median(ratios):.2f}x (median of {len(ratios)}) | {bare} |")
    return table


if __name__ == "__main__":
    main()
