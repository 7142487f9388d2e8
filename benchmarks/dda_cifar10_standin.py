"""STAND-IN: DDA (and optionally SDA) end to end on CPU with a tiny DDPM trained here on CIFAR-10 (JPEG copy).

Not comparable to the papers (ImageNet-C with the 256x256 guided-diffusion ADM, 100/50 steps): the
diffusion model here is a ~0.27M-parameter UNet2DModel trained for under a hundred steps on the train
split of the JPEG copy of CIFAR-10, and the projection uses fewer denoising steps to fit a CPU budget.
It shows that the pipeline runs: train an unconditional DDPM, save it as a user's pipeline folder,
then run the platform's ``dda`` strategy (and ``sda``) through ``cl.runner.run`` on corrupted test images
(``corruption_stream``, severity 5) with the shared ResNet-20, next to ``source`` on the same stream.

    python -m benchmarks.dda_cifar10_standin [--train-steps 80] [--n 50] [--sda] [--ddpm FOLDER]

Prints the error (%) per corruption and the mean for: source, DDA's ensemble (``sum``), the
projection alone (``projected``) and, with ``--sda``, SDA with ``synthetic`` = the first ``--sda-per-class``
train images of each class (re-synthesized source images standing in for the paper's DiT-generated ones).
"""
import argparse
import os
import tempfile
import time
from types import SimpleNamespace

import torch

from benchmarks.tta_cifar10c import SHARED, SHORT, overrides, register_cached_stream
from cl.config import load_config
from cl.registry import load_builtins
from cl.runner import run


def train_ddpm(x, out_dir, steps, batch_size=32, lr=2e-4, seed=0):
    """An unconditional DDPM (eps-prediction MSE, 1,000-step linear schedule as in DDPM / DDA's ADM)
    on uint8 images x [N, 3, 32, 32] with random flips; saved with save_pretrained to ``out_dir``."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=x.shape[-1], in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr)      # DDPM (Ho et al. 2020) CIFAR-10: Adam 2e-4
    g = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        x0 = x[idx].float().div(255) * 2 - 1
        flip = torch.rand(batch_size, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch_size,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0:
            print(f"  ddpm step {step + 1}/{steps}: loss (last 10) {sum(losses[-10:]) / 10:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(out_dir)
    return losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(SHARED, "data", "cifar10-jpeg"))
    p.add_argument("--checkpoint", default=os.path.join(SHARED, "models", "cifar-resnet", "resnet20-12fca82f.th"))
    p.add_argument("--frost-dir", default=os.path.join(SHARED, "data", "frost"))
    p.add_argument("--ddpm", default=None, help="an existing pipeline folder (skips the DDPM training)")
    p.add_argument("--train-steps", type=int, default=80)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-lr", type=float, default=1e-3, help="Adam lr (DDPM: 2e-4 over 800k steps; higher here "
                   "because training is a few dozen steps)")
    p.add_argument("--train-images", type=int, default=5000, help="random train images the DDPM learns from")
    p.add_argument("--n", type=int, default=50, help="test images per corruption")
    p.add_argument("--corruptions", nargs="+", default=["gaussian_noise", "defocus_blur", "contrast"])
    p.add_argument("--inference-steps", type=int, default=10, help="respaced schedule length (DDA: 100)")
    p.add_argument("--steps", type=int, default=5, help="noise to this step, then denoise (DDA: 50)")
    p.add_argument("--sda", action="store_true", help="also SDA (fine-tuning on re-synthesized source images)")
    p.add_argument("--sda-per-class", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_builtins()
    register_cached_stream()
    out_dir = args.out or tempfile.mkdtemp(prefix="dda_standin_")
    t_all = time.perf_counter()
    ddpm = args.ddpm
    if ddpm is None:
        from scenarios.image_files import decode_images, folder_samples
        paths, _, _ = folder_samples(os.path.join(args.data, "train"))
        pick = torch.randperm(len(paths), generator=torch.Generator().manual_seed(args.seed))[:args.train_images]
        ddpm = os.path.join(out_dir, "ddpm")
        t0 = time.perf_counter()
        losses = train_ddpm(decode_images([paths[i] for i in pick.tolist()]), ddpm, args.train_steps, args.train_batch,
                            args.train_lr, seed=args.seed)
        first, last = losses[:25], losses[-25:]
        print(f"DDPM: {args.train_steps} steps x {args.train_batch} images, mean loss of the first 25 steps {sum(first) / len(first):.4f}"
              f" -> last 25 {sum(last) / len(last):.4f} ({time.perf_counter() - t0:.0f} s); saved to {ddpm}", flush=True)
    common = SimpleNamespace(data=args.data, checkpoint=args.checkpoint, frost_dir=args.frost_dir, n=args.n,
                             corruptions=args.corruptions, seed=args.seed, device="cpu", threads=args.threads,
                             channels_last=False)
    diffusion = [f"strategy.pipeline={ddpm}", f"strategy.num_inference_steps={args.inference_steps}",
                 f"strategy.steps={args.steps}", f"strategy.cache_dir={os.path.join(out_dir, 'projections')}",
                 "strategy.projection_batch=100"]
    runs = [("source", "source", []), ("dda", "dda", diffusion),
            ("projection only", "dda", diffusion + ["strategy.ensemble=projected"])]
    if args.sda:
        runs.append(("sda", "sda", diffusion + [f"strategy.synthetic={os.path.join(args.data, 'train')}",
                                                f"strategy.per_class={args.sda_per_class}", "strategy.finetune_epochs=15",
                                                "strategy.finetune_milestones=[5,10,13]", "strategy.finetune_batch=32",
                                                "strategy.crop_scale=[0.5,1.0]"]))
    rows = {}
    for label, method, extra in runs:
        t0 = time.perf_counter()
        cfg = load_config(None, overrides(common, method, out_dir) + extra)
        res = run(cfg, os.path.join(out_dir, label.replace(" ", "_")))
        rows[label] = (res["per_domain_error"], res["metrics"]["mean_error"], time.perf_counter() - t0)
        print(f"{label}: mean error {100 * rows[label][1]:.1f}% ({rows[label][2]:.0f} s)", flush=True)
    domains = list(next(iter(rows.values()))[0])
    head = ["method"] + [SHORT.get(d.split("/")[0], d) for d in domains] + ["mean", "s"]
    print(f"\nSTAND-IN: CIFAR-10 (JPEG copy) corruptions at severity 5, ResNet-20, n={args.n} per corruption, "
          f"tiny DDPM ({args.train_steps} training steps), projection {args.steps}/{args.inference_steps} steps, "
          f"D=4, scale 6; error %")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, (per, mean, secs) in rows.items():
        print(f"| {label} | " + " | ".join(f"{100 * per[d]:.1f}" for d in domains) + f" | **{100 * mean:.1f}** | {secs:.0f} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; runs in {out_dir}")
    return rows


if __name__ == "__main__":
    main()
