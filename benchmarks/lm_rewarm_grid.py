"""Gupta et al.'s re-warming grid at toy scale (a STAND-IN: 0.8M-parameter byte-level GPT, not Pythia).

Gupta, Thérien, Ibrahim, Richter, Anthony, Belilovsky, Rish, Lesort, "Continual Pre-Training of Large
Language Models: How to (re)warm your model?", 2023. Their setting: Pythia-410M pre-trained on the Pile
with a cosine schedule (decayed to a tenth of its peak), then continued on SlimPajama with a linear
warm-up to a maximum learning rate and a cosine re-decay to a tenth of that maximum; the grid varies
the warm-up length (0.5-2% of the steps) and the maximum lr (half, equal to and twice the
pre-training peak), against a continuation at the final pre-training lr without re-warming. Claims:
(1) re-warming first *raises* the upstream and the downstream loss; (2) a larger maximum lr forgets
the upstream domain more and fits the downstream one better; (3) the warm-up length matters little.

Here: pre-train on English with a cosine schedule from ``--lr`` to ``--lr``/10 (``strategy.schedule``,
cl/schedules.py), then continue on German only (English evaluated, not trained, every
``--eval-every`` steps), every variant from the same pre-trained weights:

- ``no-rewarm``: constant at the final pre-training lr (``--lr``/10), Gupta et al.'s baseline;
- ``wW-pP``: linear warm-up over W% of the German steps from ``--lr``/10 to the peak P x ``--lr``,
  then cosine re-decay to a tenth of the peak (``scope: experience``).

    python -m benchmarks.lm_rewarm_grid [--quick] [--out runs/lm_rewarm_grid] [--warmups 0 10 20] [--peaks 0.5 1 2]

A variant whose run folder already holds a complete run is read, not re-run (an interrupted grid
continues with the same command plus ``--pretrained <out>/pretrain``).

Prints the final English/German loss, the highest losses in the first steps (the rise) and writes
``rewarm_grid.png`` (both curves per variant) into ``--out``.
"""
import argparse
import json
import os
import shutil
import tempfile
import time

from benchmarks.lm_cpt_toy import SHARED, base, domains_of, pretrain
from cl.runner import run


def variants(args, steps):
    low = args.lr / 10
    out = {"no-rewarm": {"name": "finetune", "lr": low}}
    for w in args.warmups:
        for p in args.peaks:
            peak = args.lr * p
            out[f"w{w:g}-p{p:g}"] = {"name": "finetune", "lr": peak, "schedule": {
                "name": "cosine", "scope": "experience", "warmup_steps": [0, round(steps * w / 100)],
                "peak_lr": peak, "min_lr": peak / 10}}
    return out


def done(run_dir):
    """The results of a complete run folder of an earlier call (re-running the grid skips it), else None."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            res = json.load(f)
    except OSError:
        return None
    return res if res.get("status") == "complete" else None


def curve(result, domain):
    """(step, loss on ``domain``) of every continual-evaluation record made while German was trained."""
    return [(c["step"], c["loss"][domain]) for c in result["continual_eval"] if c["experience"] >= 1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny synthetic stand-in (checks the harness only)")
    p.add_argument("--out", default=None, help="default runs/lm_rewarm_grid (--quick: a temporary folder)")
    p.add_argument("--root", default=os.path.join(SHARED, "data", "text"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="nano")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="pre-training peak lr")
    p.add_argument("--pretrain-tokens", type=int, default=300_000)
    p.add_argument("--cpt-tokens", type=int, default=120_000)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--warmups", type=float, nargs="+", default=[0, 10, 20], help="%% of the German steps")
    p.add_argument("--peaks", type=float, nargs="+", default=[0.5, 1, 2], help="x the pre-training peak lr")
    p.add_argument("--pretrained", default="", help="a pretrain run folder of an earlier call (skips pre-training)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.context, args.pretrain_tokens, args.cpt_tokens, args.eval_tokens, args.eval_every = \
            "test", 16, 1024, 512, 256, 2
        args.warmups, args.peaks = [0, 25], [1]
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="lm_rewarm_grid_") if args.quick else "runs/lm_rewarm_grid"
        cleanup = args.quick
    else:
        cleanup = False
    os.makedirs(args.out, exist_ok=True)
    eng, ger, _ = domains_of(args)
    t0 = time.perf_counter()
    pre, ckpt = pretrain(args, eng, {"name": "finetune", "schedule": {"name": "cosine", "min_lr": args.lr / 10}})
    pre_loss = pre["loss_matrix"][0][0]
    print(f"pre-training on English (cosine to lr/10): held-out loss {pre_loss:.3f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    cpt = [dict(eng, train=False), dict(ger, train_tokens=args.cpt_tokens)]
    steps = args.cpt_tokens // (args.context * args.batch_size)
    results = {}
    for name, strategy in variants(args, steps).items():
        t1 = time.perf_counter()
        results[name] = done(os.path.join(args.out, name)) or run(
            base(args, cpt, strategy, args.out, name, **{"model.checkpoint": ckpt}), os.path.join(args.out, name))
        print(f"{name}: {time.perf_counter() - t1:.0f} s", flush=True)
    first = max(args.eval_every, steps // 5)
    print(f"\nEnglish pre-trained: {pre_loss:.3f}; German before continuing: {results['no-rewarm']['initial_loss'][1]:.3f}"
          f" (nats/byte); {steps} German steps; 'early' = the highest loss over the first {first} steps")
    print("| variant | warm-up steps | peak lr | English final | English early max | German final | German early max |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        e, g = curve(r, 0), curve(r, 1)
        sched = r["config"]["strategy"].get("schedule") or {}
        warm = (sched.get("warmup_steps") or [0, 0])[1] if sched.get("name") == "cosine" else 0
        peak = r["config"]["strategy"]["lr"]
        early_e = max(v for s, v in e if s <= first)
        early_g = max(v for s, v in g if s <= first)
        print(f"| {name} | {warm} | {peak:.0e} | {r['loss_matrix'][-1][0]:.3f} | {early_e:.3f} | "
              f"{r['loss_matrix'][-1][1]:.3f} | {early_g:.3f} |")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({k: {"loss_matrix": v["loss_matrix"], "continual_eval": v["continual_eval"]}
                   for k, v in results.items()}, f)
    plot(results, os.path.join(args.out, "rewarm_grid.png"))
    print(f"(total {time.perf_counter() - t0:.0f} s; curves in {os.path.join(args.out, 'rewarm_grid.png')})")
    if cleanup:                                         # --quick's temporary folder
        shutil.rmtree(args.out, ignore_errors=True)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        for ax, d in zip(axes, (0, 1)):
            pts = curve(r, d)
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=name,
                    linestyle="--" if name == "no-rewarm" else "-")
    for ax, title in zip(axes, ("English (upstream, not trained)", "German (trained)")):
        ax.set_xlabel("continued pre-training step")
        ax.set_ylabel("held-out loss (nats/byte)")
        ax.set_title(title)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Re-warming grid, toy stand-in (0.8M-parameter byte-level GPT)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
