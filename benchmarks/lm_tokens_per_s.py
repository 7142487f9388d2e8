"""Language-model training throughput: the platform's runner against a bare PyTorch loop, and the
evaluation cost as the number of text domains grows.

Part 1: the same GPT (same initial weights), the same byte-token stream, batch size, context,
number of steps and AdamW optimizer. The bare loop is the nanoGPT-style loop a researcher writes
(random windows gathered from the token tensor, forward, flattened cross-entropy, backward, step);
ours is ``cl.runner.train_eval`` with ``finetune`` on a one-experience token scenario (random
passes of TokenData, the strategy's train_step, the NaN check, the token counter). Runs alternate
(bare, runner, ...) and the medians of the training phase are compared in tokens/s.

Part 2: the end-of-experience evaluation (mean token loss on every domain's held-out windows)
timed for 1, 2, 4 and 8 domains of the same size: the cost per domain and its growth.

    python -m benchmarks.lm_tokens_per_s [--quick] [--threads 1] [--size nano] [--steps 60]
"""
import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cl.config import build_config
from cl.registry import MODELS, load_builtins
from cl.strategy import StreamInfo
from cl.tokens import TokenData


def token_stream(n_tokens, seed=0):
    """Byte tokens of seeded pseudo-text (scenarios.text_sources.synthetic_text), as a uint8 tensor."""
    from scenarios.text_sources import synthetic_text
    text = synthetic_text(seed, lines=n_tokens // 40 + 10).encode("utf-8")[:n_tokens]
    return torch.frombuffer(bytearray(text), dtype=torch.uint8)


def bare_loop(model, tokens, context, batch_size, steps, lr, seed=0):
    """nanoGPT-style: random windows, forward, flattened CE, backward, AdamW step. Returns seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(context + 1)
    t0 = time.perf_counter()
    for _ in range(steps):
        ix = torch.randint(0, len(tokens) - context - 1, (batch_size,), generator=g)
        w = tokens[ix[:, None] + offsets].long()
        x, y = w[:, :-1], w[:, 1:]
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def runner_loop(size, tokens, context, batch_size, steps, lr, state):
    """cl.runner.train_eval with finetune on one token experience of ``steps`` batches.
    Returns (training-phase seconds, tokens trained)."""
    from cl import runner
    from cl.data import Experience, Scenario
    from strategies.finetune import Finetune

    cfg = build_config({
        "scenario": {"name": "text_domains"},
        "strategy": {"name": "finetune", "optimizer": "adamw", "lr": lr, "betas": [0.9, 0.95], "weight_decay": 0.1,
                     "batch_size": batch_size, "eval_batch_size": batch_size},
        "model": {"name": "gpt", "args": {"size": size}}, "eval_initial": False,
        "logging": {"progress": False, "console": False, "tensorboard": False, "plots": False}})
    train = TokenData(tokens, context, num_windows=steps * batch_size, vocab_size=256, name="bench")
    test = TokenData(tokens[: 2 * context + 1], context, vocab_size=256, name="bench")
    scenario = Scenario("bench", [Experience(0, train, test, list(range(256)), domain="bench")], 256, (context,),
                        metric="loss")
    model = MODELS.get("gpt")(num_classes=256, input_shape=(context,), size=size)
    model.load_state_dict(state)
    strategy = Finetune(model, OmegaConf.to_object(cfg.strategy), device="cpu",
                        stream=StreamInfo.of(scenario, batch_size))
    strategy.setup(source=None)
    with tempfile.TemporaryDirectory() as d:
        log = runner.RunLogger(d, cfg, scenario)
        tasks, task_of = runner.task_plan(scenario, 1.0, 0)
        r = runner.Run(cfg, scenario, strategy, torch.device("cpu"), strategy.stream, tasks, task_of,
                       state=runner.RunState.new(scenario), log=log, run_dir=d)
        runner.train_eval(r)
        log.close()
    return r.state.timings["train_s"], r.state.timings["train_tokens"]


def throughput(size, context, batch_size, steps, repeats, lr=1e-3):
    tokens = token_stream(200_000)
    proto = MODELS.get("gpt")(num_classes=256, input_shape=(context,), size=size)
    state = {k: v.clone() for k, v in proto.state_dict().items()}
    n_params = sum(p.numel() for p in proto.parameters())
    warm = MODELS.get("gpt")(num_classes=256, input_shape=(context,), size=size)
    bare_loop(warm, tokens, context, batch_size, 3, lr)                       # warm-up (allocator, kernels)
    bare, ours = [], []
    for _ in range(repeats):
        m = MODELS.get("gpt")(num_classes=256, input_shape=(context,), size=size)
        m.load_state_dict(state)
        bare.append(bare_loop(m, tokens, context, batch_size, steps, lr))
        t, n = runner_loop(size, tokens, context, batch_size, steps, lr, state)
        assert n == steps * batch_size * context, (n, steps * batch_size * context)
        ours.append(t)
    n = steps * batch_size * context
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"gpt {size} ({n_params / 1e6:.2f}M params), context {context}, batch {batch_size}, {steps} steps: "
          f"bare {n / b:8.0f} tokens/s | runner {n / o:8.0f} tokens/s | runner / bare time {o / b:.3f} "
          f"({100 * (o / b - 1):+.1f}%)")
    return o / b


def eval_cost(size, context, eval_tokens, domain_counts, repeats):
    from cl import runner
    from cl.runner import Task
    from strategies.finetune import Finetune
    cfg = build_config({"scenario": {"name": "text_domains"},
                        "strategy": {"name": "finetune", "eval_batch_size": 32}, "model": {"name": "gpt"}})
    model = MODELS.get("gpt")(num_classes=256, input_shape=(context,), size=size)
    strategy = Finetune(model, OmegaConf.to_object(cfg.strategy), num_classes=256)
    strategy.setup()
    tasks = [Task(str(k), f"d{k}", TokenData(token_stream(eval_tokens + 1, seed=k), context, vocab_size=256),
                  list(range(256)), [k]) for k in range(max(domain_counts))]
    base = None
    for k in domain_counts:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for t in tasks[:k]:
                runner.evaluate(strategy, t, "cpu", "loss")
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        base = base or s
        print(f"  {k} domain(s) x {eval_tokens} held-out tokens: {s:6.2f} s per evaluation "
              f"({s / k:.2f} s per domain, {s / base:.2f}x one domain)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (checks the harness, not for the record)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", default="nano")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eval-tokens", type=int, default=16384)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_builtins()
    if args.quick:
        args.size, args.context, args.steps, args.repeats, args.eval_tokens = "test", 32, 5, 2, 1024
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; median of {args.repeats} "
          "alternating runs")
    throughput(args.size, args.context, args.batch_size, args.steps, args.repeats)
    if not args.quick:
        throughput("test", 64, 16, 4 * args.steps, args.repeats)               # overhead-bound: a 0.1M model
    print("Evaluation cost as domains grow (mean token loss on each domain's held-out windows):")
    eval_cost(args.size, args.context, args.eval_tokens, [1, 2, 4] if args.quick else [1, 2, 4, 8],
              1 if args.quick else 3)


if __name__ == "__main__":
    main()
