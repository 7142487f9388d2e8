"""Training throughput of the platform's runner against a bare PyTorch loop doing the same work.

Same model (same initial weights), same uint8 data converted per batch, same batch size, same
shuffling cost, same optimizer, CPU. Two regimes: a tiny MLP on 3x32x32 inputs (overhead-bound,
how a small model behaves on a GPU) and a CIFAR ResNet-20 (compute-bound). Runs alternate
(bare, runner, bare, runner, ...) and the medians are compared.

    python -m benchmarks.runner_overhead [--quick] [--threads 2]
"""
import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cl.config import build_config
from cl.data import Batch, TensorData, to_float
from cl.registry import MODELS, load_builtins
from cl.strategy import StreamInfo


def make_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def bare_loop(model, x, y, batch_size, epochs, lr, generator=None, opt=None):
    """The minimal loop a researcher would write: shuffle, slice, convert, forward, backward, step.
    Returns the seconds taken; ``generator``/``opt`` carry over between calls (default: fresh)."""
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    g = generator or torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), batch_size):
            idx = order[s:s + batch_size]
            xb, yb = x[idx].float().div_(255.0), y[idx]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def runner_loop(model_name, model_args, x, y, batch_size, epochs, lr, state):
    """The platform's train_eval loop on the same data (one experience, evaluation on a tiny split)."""
    from cl import runner
    from cl.data import Experience, Scenario
    from strategies.finetune import Finetune

    cfg = build_config({
        "scenario": {"name": "class_split"}, "strategy": {"name": "finetune", "lr": lr, "batch_size": batch_size,
                                                          "epochs": epochs},
        "model": {"name": model_name, "args": model_args}, "eval_initial": False,
        "logging": {"progress": False, "console": False, "tensorboard": False, "plots": False}})
    train = TensorData(x, y)
    test = TensorData(x[:batch_size], y[:batch_size])
    scenario = Scenario("bench", [Experience(0, train, test, list(range(10)))], 10, (3, 32, 32))
    model = MODELS.get(model_name)(num_classes=10, input_shape=(3, 32, 32), **model_args)
    model.load_state_dict(state)
    strategy = Finetune(model, OmegaConf.to_object(cfg.strategy), device="cpu",
                        stream=StreamInfo.of(scenario, cfg.strategy.batch_size))
    strategy.setup(source=scenario.source)
    with tempfile.TemporaryDirectory() as d:
        log = runner.RunLogger(d, cfg, scenario)
        tasks, task_of = runner.task_plan(scenario, 1.0, 0)
        r = runner.Run(cfg, scenario, strategy, torch.device("cpu"), strategy.stream, tasks, task_of,
                       state=runner.RunState.new(scenario), log=log, run_dir=d)
        t0 = time.perf_counter()
        runner.train_eval(r)
        total = time.perf_counter() - t0
        log.close()
    return r.state.timings["train_s"], total


def measure(name, model_name, model_args, n, batch_size, epochs, repeats, lr=0.01):
    x, y = make_data(n)
    proto = MODELS.get(model_name)(num_classes=10, input_shape=(3, 32, 32), **model_args)
    state = {k: v.clone() for k, v in proto.state_dict().items()}
    bare, ours, ours_total = [], [], []
    bare_loop(MODELS.get(model_name)(num_classes=10, input_shape=(3, 32, 32), **model_args), x[:256], y[:256],
              batch_size, 1, lr)  # warm-up
    for _ in range(repeats):
        m = MODELS.get(model_name)(num_classes=10, input_shape=(3, 32, 32), **model_args)
        m.load_state_dict(state)
        bare.append(bare_loop(m, x, y, batch_size, epochs, lr))
        t_train, t_total = runner_loop(model_name, model_args, x, y, batch_size, epochs, lr, state)
        ours.append(t_train)
        ours_total.append(t_total)
    samples = n * epochs
    b, o, ot = statistics.median(bare), statistics.median(ours), statistics.median(ours_total)
    print(f"{name:<28s} bare {samples / b:9.0f} samples/s | runner {samples / o:9.0f} samples/s "
          f"(train phase) | overhead {100 * (o / b - 1):+5.1f}% | incl. checkpoint+eval {100 * (ot / b - 1):+5.1f}%")
    return o / b - 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (checks the harness, not for the record)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_builtins()
    repeats = 2 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; median of {repeats} alternating runs")
    measure("tiny MLP (3x32x32, bs 32)", "mlp", {"hidden": 32, "depth": 1}, 2000 if args.quick else 20000, 32, 1,
            repeats)
    if "cifar_resnet20" in MODELS.names():
        measure("CIFAR ResNet-20 (bs 32)", "cifar_resnet20", {}, 256 if args.quick else 2048, 32, 1, repeats)
    else:
        measure("small_cnn (bs 32)", "small_cnn", {"width": 32}, 256 if args.quick else 2048, 32, 1, repeats)


if __name__ == "__main__":
    main()
