"""ITTA against ERM, leave-one-domain-out over CIFAR-10 (JPEG copy) corruption domains -- a STAND-IN.

Issue 16, item 4: the domain-generalization protocol ITTA is evaluated with (DomainBed: train on
all domains but one, test on the held-out one, average over the held-out choices), run offline
on corruption domains (``scenario.domains_from=corruptions``: each corruption at severity 5 on a
disjoint slice of ``--n`` test images) instead of PACS / VLCS / OfficeHome, which are not on this
machine (their folder loaders: ``scenario.domains_from=folders scenario.preset=pacs``).

Both arms start from the shared CIFAR-10 ResNet-20 (as DomainBed starts from an ImageNet
ResNet-18) and train ``--steps`` steps of ``--batch`` images per source domain with Adam at
``--lr`` (ITTA's own steps also train its consistency loss); ITTA then adapts its test-time
blocks on the held-out stream in batches of ``--test-batch`` (the authors evaluate with batch 1,
where MixStyle mixes an image with itself). Every run goes through ``cl.runner.run``.

    python -m benchmarks.itta_dg [--corruptions gaussian_noise defocus_blur snow contrast] [--n 500] [--steps 100]
"""
import argparse
import os
import tempfile
import time

from cl.config import load_config
from cl.registry import load_builtins
from cl.runner import run
from benchmarks.tta_cifar10c import NORMALIZE, SHARED

ARMS = [("ERM", ["strategy.objective=erm"]), ("ITTA (no test-time step)", ["strategy.test_steps=0"]),
        ("ITTA", [])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(SHARED, "data", "cifar10-jpeg"))
    p.add_argument("--checkpoint", default=os.path.join(SHARED, "models", "cifar-resnet", "resnet20-12fca82f.th"))
    p.add_argument("--frost-dir", default=os.path.join(SHARED, "data", "frost"))
    p.add_argument("--corruptions", nargs="+", default=["gaussian_noise", "defocus_blur", "snow", "contrast"])
    p.add_argument("--n", type=int, default=500, help="images per domain")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=32, help="training images per source domain per step")
    p.add_argument("--lr", type=float, default=5e-5, help="DomainBed lr for a pretrained network (default 5e-5)")
    p.add_argument("--test-batch", type=int, default=64)
    p.add_argument("--ada-lr", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    load_builtins()
    out_dir = args.out or tempfile.mkdtemp(prefix="itta_dg_")
    rows = {a: {} for a, _ in ARMS}
    t_all = time.perf_counter()
    for held in args.corruptions:
        for arm, extra in ARMS:
            over = [f"name=dg_{held}_{len(rows[arm])}", f"output_dir={out_dir}", f"seed={args.seed}", "device=cpu",
                    f"threads={args.threads}", "logging.progress=false", "logging.console=false",
                    "logging.tensorboard=false", "logging.plots=false",
                    "scenario.name=leave_one_domain_out", "scenario.domains_from=corruptions",
                    "scenario.dataset=imagefolder", f"scenario.root={args.data}",
                    "scenario.corruptions=[" + ",".join(args.corruptions) + "]", f"scenario.n_per_domain={args.n}",
                    f"scenario.test_domain={held}/5",
                    "model.name=cifar_resnet20", f"model.checkpoint={args.checkpoint}", f"model.normalize={NORMALIZE}",
                    "strategy.name=itta", f"strategy.train_steps={args.steps}", f"strategy.train_batch_size={args.batch}",
                    f"strategy.lr={args.lr}", f"strategy.batch_size={args.test_batch}", f"strategy.ada_lr={args.ada_lr}",
                    *extra]
            t0 = time.perf_counter()
            res = run(load_config(None, over), os.path.join(out_dir, f"{held.replace('/', '_')}_arm{[a for a, _ in ARMS].index(arm)}"))
            rows[arm][held] = res["metrics"]["mean_error"]
            print(f"held out {held}: {arm} error {100 * rows[arm][held]:.1f}% ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    head = ["arm"] + [f"test={c}" for c in args.corruptions] + ["mean"]
    print(f"\nLeave-one-domain-out, CIFAR-10 (JPEG copy) corruption domains (severity 5, n={args.n} each), ResNet-20, "
          f"{args.steps} steps x {args.batch}/domain, lr {args.lr}; error %")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for arm, r in rows.items():
        cells = [f"{100 * r[c]:.1f}" for c in args.corruptions] + [f"**{100 * sum(r.values()) / len(r):.1f}**"]
        print(f"| {arm} | " + " | ".join(cells) + " |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; runs in {out_dir}")
    return rows


if __name__ == "__main__":
    main()
