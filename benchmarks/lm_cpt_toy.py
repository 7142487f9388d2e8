"""Toy-scale stand-in for the continual pre-training papers' phenomena (NOT their scale or models).

A ~0.8M-parameter byte-level GPT (``gpt`` size nano) is pre-trained on the English domain of
../shared/data/text, then continued on German and then Python code (Ibrahim et al. 2024's
English -> German shift, plus a third domain) with several strategies, each from the same
pre-trained weights and with the same token budget per domain:

- ``constant``: plain continued pre-training at the pre-training learning rate;
- ``replay5`` / ``replay25``: 5% / 25% of every batch replayed from earlier domains (Ibrahim et al.);
- ``subset4x``: Guo et al. 2024's first strategy, a quarter-size subset of each new domain for 4 epochs;
- ``odm``: an adaptive mixture of the domains seen so far (Online Data Mixing, Albalak et al. 2023);
- ``union``: re-training from scratch on the union of the three domains with the total budget
  (the upper bound Ibrahim et al. match).

English is evaluated but never trained in the continued runs (``train: false``), every
``--eval-every`` steps (continual evaluation: the stability gap of Guo et al. at the start of each
new domain). Prints a markdown table of the final loss on every domain and writes
``upstream_loss.png`` (English loss against continued-training step) into ``--out``.

- ``rewarm``: re-warm over 10% of each domain's steps, cosine re-decay to lr/10 (Gupta et al. 2023);
- ``infinite``: Ibrahim et al.'s infinite schedule (warm-up, cool-down to lr/2 kept across domains,
  final anneal); both through ``strategy.schedule`` (cl/schedules.py), all others at a constant lr.

    python -m benchmarks.lm_cpt_toy [--quick] [--out runs/lm_cpt_toy] [--threads 1]
"""
import argparse
import json
import os
import time

from cl.config import build_config
from cl.runner import run

SHARED = os.environ.get("CL_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  "..", "shared"))
VARIANTS = ["constant", "replay5", "replay25", "subset4x", "odm", "union", "rewarm", "infinite"]


def base(args, domains, strategy, out, name, **over):
    cfg = {"name": name, "seed": args.seed, "threads": args.threads, "output_dir": out, "eval_every": args.eval_every,
           "scenario": {"name": "text_domains", "root": args.root, "domains": domains, "context": args.context,
                        "eval_tokens": args.eval_tokens},
           "model": {"name": "gpt", "args": {"size": args.size}},
           "strategy": {"optimizer": "adamw", "lr": args.lr, "betas": [0.9, 0.95], "weight_decay": 0.1,
                        "batch_size": args.batch_size, "eval_batch_size": 32, "grad_clip": 1.0, **strategy},
           "logging": {"progress": False, "console": False, "tensorboard": False, "plots": True}}
    for k, v in over.items():
        node = cfg
        *parents, last = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return build_config(cfg)


def pretrain(args, english, strategy):
    """(results, model.pt path) of the English pre-training: ``--pretrained``'s run folder when given,
    else a one-experience run with ``strategy`` into ``<out>/pretrain``."""
    if args.pretrained:
        with open(os.path.join(args.pretrained, "results.json")) as f:
            return json.load(f), os.path.join(args.pretrained, "model.pt")
    pre = run(base(args, [dict(english, train_tokens=args.pretrain_tokens)], strategy, args.out, "pretrain",
                   save_model=True), os.path.join(args.out, "pretrain"))
    return pre, os.path.join(args.out, "pretrain", "model.pt")


def domains_of(args):
    if args.quick:
        return [{"synthetic": 0, "lines": 400, "name": "english"}, {"synthetic": 1, "lines": 400, "name": "german"},
                {"synthetic": 2, "lines": 400, "name": "code"}]
    return [{"path": "english_web.txt", "name": "english"}, {"path": "german_fortunes.txt", "name": "german"},
            {"path": "python_stdlib.txt", "name": "code"}]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny synthetic stand-in (checks the harness only)")
    p.add_argument("--out", default="runs/lm_cpt_toy")
    p.add_argument("--root", default=os.path.join(SHARED, "data", "text"))
    p.add_argument("--only", nargs="+", choices=VARIANTS, default=VARIANTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="nano")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pretrain-tokens", type=int, default=400_000)
    p.add_argument("--cpt-tokens", type=int, default=160_000)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--pretrained", default="", help="a pretrain run folder of an earlier call (skips pre-training)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.context, args.pretrain_tokens, args.cpt_tokens, args.eval_tokens, args.eval_every = \
            "test", 16, 1024, 512, 256, 8
    os.makedirs(args.out, exist_ok=True)
    eng, ger, code = domains_of(args)
    t0 = time.perf_counter()
    pre, ckpt = pretrain(args, eng, {"name": "finetune"})
    print(f"pre-training on English: {args.pretrain_tokens} tokens, held-out loss {pre['loss_matrix'][0][0]:.3f} "
          f"({time.perf_counter() - t0:.0f} s, {pre['timings']['tokens_per_s']:.0f} tokens/s)", flush=True)
    cpt = [dict(eng, train=False), dict(ger, train_tokens=args.cpt_tokens), dict(code, train_tokens=args.cpt_tokens)]
    sub = args.cpt_tokens // 4
    steps = args.cpt_tokens // (args.context * args.batch_size)          # per continued domain
    warm = max(1, steps // 10)
    runs = {
        "constant": ({"name": "finetune"}, cpt, {}),
        "replay5": ({"name": "token_replay", "replay_fraction": 0.05}, cpt, {}),
        "replay25": ({"name": "token_replay", "replay_fraction": 0.25}, cpt, {}),
        "subset4x": ({"name": "finetune"}, [cpt[0]] + [dict(d, subset_tokens=sub, subset_epochs=4) for d in cpt[1:]],
                     {}),
        "odm": ({"name": "domain_mixture", "scheduler": "odm", "weights": {"current": 0.75, "previous": 0.25},
                 "scheduler_args": {"warmup_steps": 20}}, cpt, {}),
        "union": ({"name": "finetune"}, [dict(eng, train=False), dict(ger, train=False), dict(code, train=False),
                                         {"path": [eng.get("path"), ger.get("path"), code.get("path")], "name": "union",
                                          "train_tokens": args.pretrain_tokens + 2 * args.cpt_tokens}]
                  if not args.quick else None, {}),
        # Gupta et al. 2023 / Ibrahim et al. 2024: re-warm to the peak over 10% of each domain's steps, cosine
        # re-decay to a tenth of it; and Ibrahim et al.'s infinite schedule (warm-up, cool-down to a constant
        # lr kept across domains, a final anneal over the last 10% of the run)
        "rewarm": ({"name": "finetune", "schedule": {"name": "cosine", "scope": "experience", "warmup_steps": warm,
                                                     "peak_lr": args.lr, "min_lr": args.lr / 10}}, cpt, {}),
        "infinite": ({"name": "finetune", "schedule": {"name": "infinite", "scope": "run", "warmup_steps": warm,
                                                       "peak_lr": args.lr, "constant_lr": args.lr / 2,
                                                       "cooldown_steps": steps // 4, "decay_fraction": 0.1,
                                                       "min_lr": args.lr / 10}}, cpt, {}),
    }
    results = {}
    for name in args.only:
        strategy, domains, over = runs[name]
        if domains is None:
            print(f"{name}: skipped in --quick (needs files)")
            continue
        t1 = time.perf_counter()
        over = {} if name == "union" else {"model.checkpoint": ckpt}
        cfg = base(args, domains, strategy, args.out, name, **over)
        results[name] = run(cfg, os.path.join(args.out, name))
        print(f"{name}: {time.perf_counter() - t1:.0f} s", flush=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({k: {"loss_matrix": v["loss_matrix"], "continual_eval": v["continual_eval"],
                       "initial_loss": v["initial_loss"], "metrics": v["metrics"]} for k, v in results.items()}, f)
    print(f"\nFinal held-out loss (nats/byte) after the last experience; pre-trained model: English "
          f"{pre['loss_matrix'][0][0]:.3f}")
    print("| variant | English (upstream) | German | code | mean | max English loss during CPT |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        last = r["loss_matrix"][-1][:3]
        peak = max([c["loss"][0] for c in r["continual_eval"]] or [float("nan")])
        print(f"| {name} | {last[0]:.3f} | {last[1]:.3f} | {last[2]:.3f} | {sum(last) / 3:.3f} | "
              f"{peak if name != 'union' else float('nan'):.3f} |")
    plot_upstream(results, os.path.join(args.out, "upstream_loss.png"), pre["loss_matrix"][0][0])
    print(f"(total {time.perf_counter() - t0:.0f} s; curves in {os.path.join(args.out, 'upstream_loss.png')})")


def plot_upstream(results, path, pre_loss):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        if name == "union":
            continue
        pts = [(c["step"], c["loss"][0]) for c in r["continual_eval"]]
        ax.plot([0] + [s for s, _ in pts], [pre_loss] + [v for _, v in pts], label=name)
    ax.set_xlabel("continued pre-training step (German, then code)")
    ax.set_ylabel("English held-out loss (nats/byte)")
    ax.set_title("Upstream loss during continued pre-training (toy stand-in)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
