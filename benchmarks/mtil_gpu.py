"""One MTIL order with a real (small) CLIP on a GPU, if the weights and data are present.

For a lent GPU machine: runs clip_finetune, clip_lwf, wise_ft and zscl on ZSCL's MTIL Order I (or II)
with the open_clip architecture and weights you give, at ZSCL's settings (scenarios/mtil.py,
strategies/zscl.py) except the model, and prints Transfer / Avg. / Last next to each other. The
published ViT-B/16 numbers are in experiments/reproduce/zscl_mtil_order1_*.yaml; a smaller model
(e.g. ViT-B-32 or RN50) gives other numbers.

    CL_CLIP_WEIGHTS=/path/ViT-B-32-openai.pt CL_CLIP_ARCH=ViT-B-32 CL_MTIL_ROOT=/data/mtil \\
    [CL_IMAGENET_TRAIN=/data/imagenet/train CL_CC_CSV=/data/cc/Validation_GCC-1.1.0-Validation_output.csv] \\
    python -m benchmarks.mtil_gpu [--order I] [--samples 64064] [--strategies zscl,clip_finetune]

Without ImageNet / Conceptual Captions, zscl distils on the current task's images and class prompts
(printed as ``zscl (current refs)``). Missing weights or data: prints what is missing and exits 0.
"""
import argparse
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--order", default="I", choices=["I", "II"])
    p.add_argument("--samples", type=int, default=64064, help="training samples per task (ZSCL: 1,001 x 64)")
    p.add_argument("--strategies", default="clip_finetune,clip_lwf,wise_ft,zscl")
    p.add_argument("--out", default="runs/mtil_gpu")
    args = p.parse_args(argv)
    weights, arch = os.environ.get("CL_CLIP_WEIGHTS", ""), os.environ.get("CL_CLIP_ARCH", "ViT-B-32")
    root = os.environ.get("CL_MTIL_ROOT", "")
    missing = [f"{k} ({why})" for k, v, why in [
        ("CL_CLIP_WEIGHTS", weights, "a local open_clip weights file for CL_CLIP_ARCH"),
        ("CL_MTIL_ROOT", root, "the 11 datasets in torchvision's layouts")] if not v or not os.path.exists(v)]
    if missing:
        print("skipped: set " + "; ".join(missing))
        return 0
    import torch
    from cl.config import load_config
    from cl.runner import run
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    imagenet, cc = os.environ.get("CL_IMAGENET_TRAIN", ""), os.environ.get("CL_CC_CSV", "")
    refs = ([f"strategy.ref_images={imagenet}", f"strategy.ref_texts={cc}"]
            if os.path.isdir(imagenet) and os.path.isfile(cc) else ["strategy.ref_images=current", "strategy.ref_texts=current"])
    rows = []
    for name in args.strategies.split(","):
        extra = refs if name == "zscl" else []
        cfg = load_config(None, [
            f"name=mtil_{args.order}_{name}", f"output_dir={args.out}", "device=cuda", "amp=true", "eval_initial=true",
            "scenario.name=mtil", f"scenario.order={args.order}", f"scenario.root={root}",
            f"scenario.train_samples_per_task={args.samples}", "model.name=clip", f"model.args.arch={arch}",
            f"model.args.pretrained={weights}", f"strategy.name={name}", "logging.progress=false", *extra])
        t0 = time.perf_counter()
        res = run(cfg, os.path.join(args.out, f"order{args.order}", name))
        m = res["metrics"]
        label = name + (" (current refs)" if name == "zscl" and extra[0].endswith("current") else "")
        rows.append((label, m["task_il_transfer"], m["task_il_average_all_entries"], m["task_il_last"],
                     time.perf_counter() - t0, res["initial_task_il_accuracy"]))
    zs = rows[0][5]
    print(f"MTIL Order {args.order}, {arch} ({weights}), task-IL accuracy %")
    print("| strategy | Transfer | Avg. | Last | minutes |\n|---|---|---|---|---|")
    print(f"| zero-shot | {100 * sum(zs[1:]) / len(zs[1:]):.1f} | {100 * sum(zs) / len(zs):.1f} | "
          f"{100 * sum(zs) / len(zs):.1f} | - |")
    for label, tr, avg, last, sec, _ in rows:
        print(f"| {label} | {100 * tr:.1f} | {100 * avg:.1f} | {100 * last:.1f} | {sec / 60:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
