"""The GPU path measured in one script (under 8 minutes on one GPU): what a user gets on a GPU.

1. runner vs bare loop: the platform's ``train_eval`` loop (finetune) against a bare PyTorch loop
   doing the same work (same initial weights, same uint8 data on the device converted per batch,
   same batch size, SGD), CIFAR ResNet-20, images/s; fp32, bf16 autocast, channels_last.
2. CoTTA: the teacher's augmented views in one batched pass (``views_per_forward=32``) against one
   pass per view (``views_per_forward=1``), s/batch of 200 images.
3. A ViT prompt method (L2P on the CIFAR ViT) training images/s, fp32 and bf16 autocast.
4. A small GPT's (``gpt`` size nano) training tokens/s: fp32, bf16 autocast, torch.compile,
   bf16 + compile.

Every figure is a median over repeats, the variants side by side in one process. ``--quick``: tiny
sizes, a few steps, on whatever device is there (the CPU in CI): it checks the harness, not speed.
``--compile`` adds the torch.compile rows in quick mode (slow to compile on a CPU).

    python -m benchmarks.gpu_suite [--quick] [--device cuda] [--compile] [--json OUT.json]
"""
import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cl.config import build_config
from cl.data import Experience, Scenario, TensorData, to_float
from cl.registry import MODELS, STRATEGIES, load_builtins
from cl.strategy import StreamInfo


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    """Median wall seconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def autocast(device, amp):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


# ---------------------------------------------------------------------------- 1. runner vs bare loop
def bare_epoch(model, opt, x, y, bs, gen, device, amp):
    for idx in torch.randperm(len(y), generator=gen).split(bs):
        xb = to_float(x[idx.to(x.device)])
        with autocast(device, amp):
            loss = F.cross_entropy(model(xb), y[idx.to(y.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def runner_vs_bare(device, n, bs, repeats, model_name, model_args, amp, channels_last):
    from cl import runner
    from strategies.finetune import Finetune
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    torch.manual_seed(0)
    base = MODELS.get(model_name)(num_classes=10, input_shape=(3, 32, 32), **model_args)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def bare():
        model = MODELS.get(model_name)(num_classes=10, input_shape=(3, 32, 32), **model_args)
        model.load_state_dict(state)
        model.to(device, memory_format=fmt).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        bare_epoch(model, opt, x, y, bs, torch.Generator().manual_seed(0), device, amp)

    cfg = build_config({"scenario": {"name": "class_split"}, "amp": bool(amp), "amp_dtype": amp or "fp16",
                        "strategy": {"name": "finetune", "lr": 0.01, "batch_size": bs, "epochs": 1},
                        "model": {"name": model_name, "args": model_args}, "eval_initial": False,
                        "logging": {"progress": False, "console": False, "tensorboard": False, "plots": False}})
    scenario = Scenario("bench", [Experience(0, TensorData(x, y), TensorData(x[:bs], y[:bs]), list(range(10)))],
                        10, (3, 32, 32))

    def ours():
        model = MODELS.get(model_name)(num_classes=10, input_shape=(3, 32, 32), **model_args)
        model.load_state_dict(state)
        model.to(memory_format=fmt)
        strategy = Finetune(model, OmegaConf.to_object(cfg.strategy), device=device, amp=amp or False,
                            stream=StreamInfo.of(scenario, bs))
        strategy.setup()
        with tempfile.TemporaryDirectory() as d:
            tasks, task_of = runner.task_plan(scenario, 1.0, 0)
            r = runner.Run(cfg, scenario, strategy, device, strategy.stream, tasks, task_of,
                           state=runner.RunState.new(scenario), log=runner.RunLogger(d, cfg, scenario), run_dir=d)
            runner.train_eval(r)
            r.log.close()

    t_bare, t_ours = timed(bare, device, repeats), timed(ours, device, repeats)
    return {"bare_img_s": n / t_bare, "runner_img_s": n / t_ours, "runner_over_bare": t_ours / t_bare}


# ---------------------------------------------------------------------------- 2. CoTTA views
def cotta_views(device, batch, n_batches, model_name, views):
    from cl.models import build_model
    x = torch.rand(batch, 3, 32, 32, device=device)
    source = TensorData(torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,)))
    out = {}
    for vpf in (1, views):
        cfg = build_config({"scenario": {"name": "synthetic_shift"}, "model": {"name": model_name},
                            "strategy": {"name": "cotta", "batch_size": batch, "ap": 1.0, "n_augmentations": views,
                                         "views_per_forward": vpf}})
        scenario = Scenario("bench", [Experience(0, None, source, list(range(10)))], 10, (3, 32, 32),
                            protocol="online", source=source)
        torch.manual_seed(0)
        strategy = STRATEGIES.get("cotta")(build_model(cfg.model, 10, (3, 32, 32)), OmegaConf.to_object(cfg.strategy),
                                           device=device, stream=StreamInfo.of(scenario, batch))
        strategy.setup(source=scenario.source)
        out[vpf] = timed(lambda: [strategy.adapt(x) for _ in range(n_batches)], device, 1) / n_batches
    return {"per_view_s_batch": out[1], "batched_s_batch": out[views], "speedup": out[1] / out[views]}


# ---------------------------------------------------------------------------- 3. ViT prompt method
def prompt_images_s(device, batch, steps, model_args, amp):
    from cl.models import build_model
    cfg = build_config({"scenario": {"name": "class_split"}, "model": {"name": "vit_tiny_cifar", "args": model_args},
                        "strategy": {"name": "l2p", "batch_size": batch}})
    x = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (batch * steps,))
    scenario = Scenario("bench", [Experience(0, TensorData(x, y), TensorData(x[:batch], y[:batch]), list(range(10)))],
                        10, (3, 32, 32))
    torch.manual_seed(0)
    strategy = STRATEGIES.get("l2p")(build_model(cfg.model, 10, (3, 32, 32)), OmegaConf.to_object(cfg.strategy),
                                     device=device, amp=amp or False, stream=StreamInfo.of(scenario, batch))
    strategy.setup()
    exp = scenario.experiences[0]
    strategy.before_experience(exp)
    data = strategy.train_data(exp)
    batches = list(data.batches(batch, device=device))
    t = timed(lambda: [strategy.train_step(b) for b in batches], device, 1)
    return {"img_s": batch * steps / t}


# ---------------------------------------------------------------------------- 4. small GPT
def gpt_tokens_s(device, size, context, batch, steps, amp, compile_):
    from cl.data import Batch
    from strategies.finetune import Finetune
    cfg = build_config({"scenario": {"name": "class_split"}, "model": {"name": "gpt", "args": {"size": size}},
                        "strategy": {"name": "finetune", "optimizer": "adamw", "lr": 1e-3, "batch_size": batch}})
    torch.manual_seed(0)
    model = MODELS.get("gpt")(num_classes=256, input_shape=(context,), size=size)
    strategy = Finetune(model, OmegaConf.to_object(cfg.strategy), num_classes=256, device=device, amp=amp or False)
    strategy.setup()
    if compile_:
        strategy.model.compile()
    tokens = torch.randint(0, 256, (steps, batch, context + 1), device=device)
    batches = [Batch(t[:, :-1], t[:, 1:]) for t in tokens]
    t = timed(lambda: [strategy.train_step(b) for b in batches], device, 1)
    return {"tokens_s": steps * batch * context / t}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile rows also in --quick mode")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    load_builtins()
    device = torch.device(args.device)
    quick = args.quick
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu"
    amps = [None, "bf16"] if bf16 else [None]
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"{'quick mode (harness check, not speed)' if quick else 'full mode'}")
    res = {"device": str(device), "quick": quick}

    model, margs = ("mlp", {"hidden": 32}) if quick else ("cifar_resnet20", {})
    n, bs = (64, 32) if quick else (10000, 256)
    rows = []
    for amp in amps:
        for cl_ in ([False] if quick else [False, True]):
            r = runner_vs_bare(device, n, bs, 1 if quick else 3, model, margs, amp, cl_)
            key = f"{model} {amp or 'fp32'}{' channels_last' if cl_ else ''}"
            rows.append((key, r))
            print(f"  runner vs bare  {key:<34s} bare {r['bare_img_s']:9.0f} img/s  runner {r['runner_img_s']:9.0f} "
                  f"img/s  runner/bare time {r['runner_over_bare']:.3f}")
    res["runner_vs_bare"] = dict(rows)

    cm = "mlp" if quick else "cifar_resnet20"
    c = cotta_views(device, 8 if quick else 200, 1 if quick else 10, cm, 4 if quick else 32)
    print(f"  cotta views     {cm}: one pass per view {c['per_view_s_batch']:.4f} s/batch, batched "
          f"{c['batched_s_batch']:.4f} s/batch, speed-up {c['speedup']:.2f}x")
    res["cotta_views"] = c

    vargs = ({"embed_dim": 16, "depth": 5, "num_heads": 2, "patch_size": 8} if quick else {})
    res["prompt_l2p"] = {}
    for amp in amps:
        r = prompt_images_s(device, 8 if quick else 128, 2 if quick else 30, vargs, amp)
        res["prompt_l2p"][amp or "fp32"] = r
        print(f"  l2p vit         {amp or 'fp32':<6s} {r['img_s']:9.0f} img/s")

    size, ctx, gbs, steps = ("test", 16, 4, 2) if quick else ("nano", 256, 32, 40)
    res["gpt"] = {}
    for comp in ([False, True] if (args.compile or not quick) else [False]):
        for amp in amps:
            r = gpt_tokens_s(device, size, ctx, gbs, steps, amp, comp)
            key = f"{amp or 'fp32'}{' compile' if comp else ''}"
            res["gpt"][key] = r
            print(f"  gpt {size:<6s}      {key:<14s} {r['tokens_s']:10.0f} tokens/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
