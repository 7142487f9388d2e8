"""Diffusion projection of test images towards the source domain (DDA's input adaptation).

Gao et al., "Back to the Source: Diffusion-Driven Adaptation to Test-Time Corruption", CVPR 2023
(arXiv 2207.03442); code shiyegao/DDA. Their ``image_adapt/scripts/image_sample.py`` with
``image_adapt.sh`` (``--timestep_respacing 100 --N 50 --D 4 --scale 6``) and
``guided_diffusion/gaussian_diffusion.py`` ``p_sample_loop_progressive``:

1. the image x0 (in [-1, 1], at the diffusion model's resolution) is noised to step N of the
   respaced schedule: x_N = sqrt(abar_N) x0 + sqrt(1 - abar_N) eps;
2. N ancestral (DDPM) denoising steps; at each, the model's prediction of the clean image
   pred_x0(x_t) (clipped to [-1, 1]) is compared with x0 through a low-pass filter
   phi_D = up-sample(down-sample(., 1/D), D) (ILVR-style image guidance) and the step's sample is
   moved against the gradient of the distance: x_{t-1} <- x_{t-1} - scale * grad_{x_t} ||phi_D(x0) - phi_D(pred_x0)||.

Differences from the authors' code, all stated: the model and scheduler are ``diffusers`` ones
(``UNet2DModel`` + ``DDPMScheduler``: any unconditional DDPM pipeline saved with
``save_pretrained``, e.g. ``google/ddpm-cifar10-32``), so the respaced steps are the scheduler's
``set_timesteps(num_inference_steps)`` ones and the noise level of step N is that of the first
denoising step (the authors noise to index N then start denoising at N-1); the low-pass filter is
torch's antialiased bicubic resize (theirs: ``resize_right`` cubic); the guidance norm is taken per
image (theirs: over the whole batch, so one image's guidance depends on its batch-mates); the
noise of image i comes from a generator seeded from (seed, its content), so a projection does not
depend on the batch it is in and can be cached by content.

``DiffusionProjection.get_many(x)`` returns the projections of a batch, from memory, from
``cache_dir/<key>.pt`` or computed now; the key hashes the 8-bit image and every setting that
changes the result.
"""
import hashlib
import os

import torch
import torch.nn.functional as F

from cl import io
from cl.errors import ConfigError

__all__ = ["DiffusionProjection", "low_pass", "tiny_unconditional_pipeline", "load_unconditional"]


def low_pass(x, factor):
    """phi_D: bicubic down-sampling by ``factor`` (antialiased) then bicubic up-sampling to x's size."""
    if factor <= 1:
        return x
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)


def tiny_unconditional_pipeline(seed=0, sample_size=8, channels=3):
    """A DDPMPipeline with a tiny random UNet2DModel (~20k parameters) and a 1,000-step linear
    DDPMScheduler (tests; nothing is downloaded). Its projections are not meaningful images."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return DDPMPipeline(unet=unet.eval(), scheduler=DDPMScheduler(num_train_timesteps=1000))


def load_unconditional(spec, device="cpu"):
    """(unet, DDPMScheduler) from 'tiny-random' or a local folder / hub id holding an unconditional
    pipeline (a ``unet`` and a ``scheduler``, e.g. a DDPMPipeline saved with ``save_pretrained``)."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError("The diffusion projection needs the diffusers package: "
                          "pip install 'cl-platform[diffusion]'.") from None
    if not spec:
        raise ConfigError("strategy.pipeline is empty: give the folder of an unconditional diffusion pipeline "
                          "trained on the source domain (a DDPMPipeline saved with save_pretrained, e.g. a copy of "
                          "google/ddpm-cifar10-32 for CIFAR-10), or pre-computed projections in strategy.cache_dir.")
    if spec == "tiny-random":
        pipe = tiny_unconditional_pipeline()
    else:
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(spec)
        except Exception as e:      # hub / network / layout failures
            raise ConfigError(
                f"Cannot load the diffusion pipeline '{spec}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                "Give a local folder saved with save_pretrained (an unconditional pipeline with a unet and a "
                "scheduler), or pre-compute the projections on a machine that has it and point strategy.cache_dir "
                "at them.") from None
    unet = getattr(pipe, "unet", None)
    if unet is None or getattr(unet.config, "num_class_embeds", None) or not hasattr(unet.config, "sample_size"):
        raise ConfigError(f"The pipeline '{spec}' has no unconditional UNet2DModel (unet); DDA needs an "
                          "unconditional image diffusion model such as a DDPMPipeline.")
    # DDA samples ancestrally (p_sample) and clips the predicted clean image (clip_denoised=True).
    scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config, clip_sample=True, clip_sample_range=1.0)
    return unet.to(device).eval().requires_grad_(False), scheduler


class DiffusionProjection:
    """``get_many(x)`` -> the projections of images x [B, C, H, W] in [0, 1] (same shape, cached)."""

    def __init__(self, pipeline, num_inference_steps=100, steps=50, downsample=4, guidance_scale=6.0, seed=0,
                 cache_dir="", device="cpu", chunk=16):
        if not 0 < steps <= num_inference_steps:
            raise ConfigError(f"strategy.steps ({steps}) must be in [1, strategy.num_inference_steps="
                              f"{num_inference_steps}]: the image is noised to that step of the respaced schedule.")
        if downsample < 1 or downsample & (downsample - 1):
            raise ConfigError(f"strategy.downsample must be a power of two >= 1 (DDA asserts log2(D) is an "
                              f"integer), got {downsample}.")
        self.spec, self.device, self.cache_dir, self.chunk = pipeline, torch.device(device), cache_dir, int(chunk)
        self.num_inference_steps, self.steps, self.downsample = int(num_inference_steps), int(steps), int(downsample)
        self.scale, self.seed = float(guidance_scale), int(seed)
        self.unet = self.scheduler = None
        self.memory, self.keep, self.computed = {}, 256, 0
        settings = f"{pipeline}|{num_inference_steps}|{steps}|{downsample}|{guidance_scale}|{seed}"
        self.settings = hashlib.sha256(settings.encode()).hexdigest()[:16]

    def key(self, x):
        """sha256 of the 8-bit image, its shape and the settings: the cache key."""
        q = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
        return hashlib.sha256(self.settings.encode() + str(tuple(q.shape)).encode() + q.numpy().tobytes()).hexdigest()

    def _path(self, key):
        return os.path.join(self.cache_dir, f"{key}.pt")

    def load(self):
        """Load the pipeline now (else it is loaded on the first cache miss)."""
        if self.unet is None:
            self.unet, self.scheduler = load_unconditional(self.spec, self.device)
            size = self.unet.config.sample_size
            size = size if isinstance(size, int) else size[0]
            if size % self.downsample:
                raise ConfigError(f"strategy.downsample={self.downsample} must divide the diffusion model's "
                                  f"resolution {size}.")
        return self.unet

    def get_many(self, xs):
        """Projections [B, C, H, W] (float in [0, 1], on xs' device) of xs [B, C, H, W] in [0, 1]."""
        keys = [self.key(x) for x in xs]
        for k in keys:
            if k not in self.memory and self.cache_dir and os.path.isfile(self._path(k)):
                self.memory[k] = io.torch_load(self._path(k))
        missing = {}
        for k, x in zip(keys, xs):
            if k not in self.memory:
                missing.setdefault(k, x)
        todo = list(missing.items())
        for start in range(0, len(todo), self.chunk):
            part = todo[start:start + self.chunk]
            out = self.project(torch.stack([x for _, x in part]), [k for k, _ in part])
            for (k, _), y in zip(part, out):
                self.memory[k] = (y.clamp(0, 1) * 255).round().to(torch.uint8).cpu()   # DDA saves PNGs: 8 bits
                if self.cache_dir:
                    os.makedirs(self.cache_dir, exist_ok=True)
                    io.torch_save(self.memory[k], self._path(k))
        result = torch.stack([self.memory[k] for k in keys]).to(xs.device).float().div_(255)
        for k in keys:                                      # most recently used last, bounded memory
            self.memory[k] = self.memory.pop(k)
        while len(self.memory) > max(self.keep, len(keys)):
            self.memory.pop(next(iter(self.memory)))
        return result

    def project(self, xs, keys):
        """The DDA projection of xs [B, C, H, W] in [0, 1] (not cached); ``keys`` seed each image's noise."""
        unet = self.load()
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        c_in, (h, w) = unet.config.in_channels, xs.shape[-2:]
        if xs.shape[1] != c_in and not (xs.shape[1] == 1 and c_in == 3):
            raise ConfigError(f"The diffusion model takes {c_in}-channel images but the stream's have {xs.shape[1]}.")
        x0 = xs.to(self.device).float().expand(-1, c_in, -1, -1)
        if (h, w) != size:
            x0 = F.interpolate(x0, size=size, mode="bicubic", align_corners=False, antialias=True)
        x0 = (x0.clamp(0, 1) * 2 - 1)
        gens = [torch.Generator(device="cpu").manual_seed((int(k[:12], 16) + self.seed) % (2 ** 63)) for k in keys]
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(self.device)
        sched = self.scheduler
        sched.set_timesteps(self.num_inference_steps)
        timesteps = sched.timesteps[-self.steps:]
        xt = sched.add_noise(x0, noise, timesteps[:1].repeat(len(x0)))
        reference = low_pass(x0, self.downsample)
        for t in timesteps:
            xt = xt.detach().requires_grad_(True)
            with torch.enable_grad():
                eps = unet(xt, t).sample
                out = sched.step(eps, t, xt, generator=gens)
                distance = (reference - low_pass(out.pred_original_sample, self.downsample)).flatten(1).norm(dim=1)
                grad, = torch.autograd.grad(distance.sum(), xt)
            xt = out.prev_sample.detach() - self.scale * grad
        y = (xt.detach().clamp(-1, 1) + 1) / 2
        if (h, w) != size:
            y = F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        if xs.shape[1] == 1 and c_in == 3:
            y = y.mean(1, keepdim=True)
        self.computed += len(xs)
        return y.to(xs.device)
