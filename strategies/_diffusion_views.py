"""Diffusion-generated variations of test images, made by a ``diffusers`` pipeline (optional extra
``diffusion``) and cached by image content, so a run is deterministic and each image is generated once.

DiffTPT (Feng et al., ICCV 2023; code chunmeifeng/DiffTPT ``image_generator_R.py``) generates the
views offline with Stable Diffusion image variations (``lambdalabs/sd-image-variations-diffusers``,
revision ``v2.0``, ``guidance_scale=3``, one image per call, 65 calls per test image) and reads them
back from disk during test-time tuning. Here ``DiffusionViews.get(x)`` returns the ``n_views``
variations of image ``x``: from memory, else from ``cache_dir/<sha256 of the image>.pt``, else
generated now with a generator seeded from that hash (same image -> same views, whatever the order
of the stream) and stored. Pre-generate on a GPU machine and copy ``cache_dir`` to run anywhere.

``pipeline``: a Hugging Face id or local folder for ``DiffusionPipeline.from_pretrained`` (any
pipeline that takes ``image=`` and returns image variations), or ``tiny-random``: a randomly
initialised ~100k-parameter image-variation pipeline for tests (its views are noise).
"""
import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from cl import io
from cl.errors import ConfigError

__all__ = ["DiffusionViews", "tiny_image_variation_pipeline"]


def tiny_image_variation_pipeline(seed=0):
    """A StableDiffusionImageVariationPipeline with tiny random components (16x16 output), built from
    diffusers' / transformers' own configs (tests; nothing is downloaded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=4, sample_size=16)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, projection_dim=16, num_hidden_layers=1,
                                                             num_attention_heads=2, image_size=16, patch_size=8,
                                                             intermediate_size=32))
    pipe = StableDiffusionImageVariationPipeline(vae=vae.eval(), image_encoder=encoder.eval(), unet=unet.eval(),
                                                 scheduler=DDIMScheduler(), safety_checker=None,
                                                 feature_extractor=CLIPImageProcessor(crop_size=16, size=16),
                                                 requires_safety_checker=False)
    return pipe


def load_pipeline(spec, revision=None, device="cpu"):
    """``spec``: 'tiny-random' or a hub id / local folder for DiffusionPipeline.from_pretrained."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError("Diffusion views need the diffusers package: pip install 'cl-platform[diffusion]'.") from None
    if spec == "tiny-random":
        pipe = tiny_image_variation_pipeline()
    else:
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(spec, revision=revision or None)
        except Exception as e:      # hub/network/layout failures
            raise ConfigError(
                f"Cannot load the diffusion pipeline '{spec}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
                "Give a local folder saved with save_pretrained, or pre-generate the views on a machine that has the "
                "weights and point strategy.cache_dir at them.") from None
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None                 # DiffTPT disables it (image_generator_R.py)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class DiffusionViews:
    """``get(x)`` -> [n_views, C, H, W] float variations of image x [C, H, W] in [0, 1] (cached)."""

    def __init__(self, pipeline, n_views, guidance_scale=3.0, num_inference_steps=50, cache_dir="", revision=None,
                 device="cpu", chunk=16):
        self.spec, self.revision, self.device = pipeline, revision, device
        self.n_views, self.guidance_scale, self.steps = int(n_views), float(guidance_scale), int(num_inference_steps)
        self.cache_dir, self.chunk = cache_dir, int(chunk)
        self.pipe, self.memory, self.generated, self.keep = None, {}, 0, 64

    @staticmethod
    def key(x):
        """sha256 of the image quantized to 8 bits (with its shape): the cache key."""
        q = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
        return hashlib.sha256(str(tuple(q.shape)).encode() + q.numpy().tobytes()).hexdigest()

    def _path(self, key):
        return os.path.join(self.cache_dir, f"{key}.pt")

    def get(self, x):
        """The views of one image x [C, H, W] (float, on x's device)."""
        return self.get_many(x[None])[0]

    def get_many(self, xs):
        """The views of each image of xs [B, C, H, W]; the missing ones are generated in one pipeline call."""
        keys = [self.key(x) for x in xs]
        for k in keys:
            if k not in self.memory and self.cache_dir and os.path.isfile(self._path(k)):
                self.memory[k] = io.torch_load(self._path(k))
        missing = {k: x for k, x in zip(keys, xs) if k not in self.memory or len(self.memory[k]) < self.n_views}
        if missing:
            for k, views in zip(missing, self.generate(list(missing.values()), list(missing))):
                self.memory[k] = views
                if self.cache_dir:
                    os.makedirs(self.cache_dir, exist_ok=True)
                    io.torch_save(views, self._path(k))
        for k in keys:                                      # most recently used last
            self.memory[k] = self.memory.pop(k)
        while len(self.memory) > max(self.keep, len(keys)):  # bounded: a few batches, not the stream
            self.memory.pop(next(iter(self.memory)))
        return [self.memory[k][:self.n_views].to(x.device).float().div_(255) for k, x in zip(keys, xs)]

    def load(self):
        """Load the pipeline now (it is otherwise loaded on the first cache miss)."""
        if self.pipe is None:
            self.pipe = load_pipeline(self.spec, self.revision, self.device)
        return self.pipe

    @torch.no_grad()
    def generate(self, xs, keys):
        """``n_views`` variations of each image in ``xs`` (uint8 [V, C, H, W] at the image's size). View j of
        the image with key k comes from a generator seeded from (k, j), so it does not depend on which
        other images share the pipeline call."""
        from PIL import Image
        self.load()
        jobs = [(i, j) for i in range(len(xs)) for j in range(self.n_views)]
        images = [Image.fromarray((x.expand(3, -1, -1) if x.shape[0] == 1 else x).detach().float().clamp(0, 1)
                                  .mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()) for x in xs]
        outs = []
        for start in range(0, len(jobs), self.chunk):
            part = jobs[start:start + self.chunk]
            gens = [torch.Generator(device="cpu").manual_seed(int(keys[i][:13], 16) * 1000 + j) for i, j in part]
            res = self.pipe(image=[images[i] for i, _ in part], num_images_per_prompt=1, guidance_scale=self.guidance_scale,
                            num_inference_steps=self.steps, generator=gens, output_type="np").images
            outs.append(torch.from_numpy(np.asarray(res, dtype=np.float32)).permute(0, 3, 1, 2))
        flat = torch.cat(outs)
        result = []
        for i, x in enumerate(xs):
            v = F.interpolate(flat[i * self.n_views:(i + 1) * self.n_views], size=tuple(x.shape[-2:]), mode="bicubic",
                              align_corners=False, antialias=True)
            if x.shape[0] == 1:
                v = v.mean(1, keepdim=True)
            result.append((v.clamp(0, 1) * 255).round().to(torch.uint8))
        self.generated += len(xs)
        return result
