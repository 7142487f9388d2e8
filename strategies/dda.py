"""DDA: diffusion-driven input adaptation plus the self-ensemble of the classifier's predictions on
the test image and on its diffusion projection.

Gao et al., "Back to the Source: Diffusion-Driven Adaptation to Test-Time Corruption", CVPR 2023
(arXiv 2207.03442); code shiyegao/DDA. Nothing is trained: the classifier and the unconditional
diffusion model (trained on the source domain) are both frozen. Per test image x:

1. x' = the diffusion projection of x (``strategies/_diffusion_projection.py``: noise to step N,
   N denoising steps with low-pass image guidance), cached by image content;
2. the prediction is the sum of the classifier's softmax scores on x and on x'
   (``model_adapt/evaluation.py`` ``ensemble_from_logits`` mode ``sum``, which adds what mmcls's
   ``model(return_loss=False)`` returns: softmax scores). Returned as log(mean of the two), whose
   argmax is the authors' prediction.

Defaults: ``image_adapt.sh`` (``--timestep_respacing 100 --N 50 --D 4 --scale 6``, the 256x256
unconditional ADM of guided-diffusion), ``test.sh`` (``--ensemble sum``),
``model_adapt/configs/ensemble/resnet50_ensemble_b64_imagenet.py`` (``samples_per_gpu=64``).
The classifier runs in eval mode (``single_gpu_test_ensemble``: ``model.eval()``).
"""
from dataclasses import dataclass

import torch

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._diffusion_projection import DiffusionProjection

ENSEMBLES = ("sum", "original", "projected")


def ensemble(logits_original, logits_projected, mode="sum"):
    """log of the averaged softmax scores (``sum``), or the log-softmax of one of the two inputs."""
    if mode == "original":
        return logits_original.float().log_softmax(1)
    if mode == "projected":
        return logits_projected.float().log_softmax(1)
    p = logits_original.float().softmax(1) + logits_projected.float().softmax(1)
    return (p / 2).log()


@dataclass
class DDAConfig(StrategyConfig):
    name: str = "dda"
    batch_size: int = 64              # resnet50_ensemble_b64_imagenet.py: samples_per_gpu=64 (no effect on results)
    eval_batch_size: int = 64
    pipeline: str = ""                # an unconditional DDPM pipeline folder (save_pretrained) or 'tiny-random'
    num_inference_steps: int = 100    # image_adapt.sh --timestep_respacing 100
    steps: int = 50                   # image_adapt.sh --N 50 (noise to step 50 of 100, then 50 denoising steps)
    downsample: int = 4               # image_adapt.sh --D 4 (low-pass filter factor)
    guidance_scale: float = 6.0       # image_adapt.sh --scale 6
    ensemble: str = "sum"             # test.sh --ensemble sum ('original': source only, 'projected': diffusion only)
    cache_dir: str = ""               # projections as <cache_dir>/<sha256 of image + settings incl. pipeline>.pt
    projection_batch: int = 16        # images per diffusion call (memory; image_adapt.sh uses 4 per GPU)
    projection_seed: int = 0          # mixed into each image's noise seed


@STRATEGIES.register("dda")
class DDA(Strategy):
    """Frozen classifier; prediction = ensemble of its softmax on each image and on its diffusion projection."""

    protocols = ("online",)

    Config = DDAConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.ensemble not in ENSEMBLES:
            raise ConfigError(f"strategy.ensemble must be one of {ENSEMBLES}, got '{cfg.ensemble}'.")
        shape = tuple(self.stream.input_shape or ())
        if shape and len(shape) != 3:
            raise ConfigError(f"{type(self).__name__} projects images [C, H, W] with a diffusion model, but the "
                              f"stream's inputs have shape {shape}; use an image scenario.")
        self.projection = DiffusionProjection(cfg.pipeline, cfg.num_inference_steps, cfg.steps, cfg.downsample,
                                              cfg.guidance_scale, cfg.projection_seed, cfg.cache_dir,
                                              device=self.device, chunk=cfg.projection_batch)

    def configure_model(self):
        self.model.eval()
        self.model.requires_grad_(False)

    def parameters_to_train(self):
        return []

    def warm_up(self, source):
        if not self.cfg.cache_dir:
            self.projection.load()     # fail now (ConfigError), not mid-stream; with a cache, load on the first miss

    def classify_projection(self, projected):
        """Logits of the classifier that reads the projected images (DDA: the same source classifier)."""
        return self.model(projected)

    @torch.no_grad()
    def forward_and_adapt(self, x):
        projected = self.projection.get_many(x) if self.cfg.ensemble != "original" else x
        with self.autocast():
            original = self.model(x).float()
            on_projection = self.classify_projection(projected).float()
        return ensemble(original, on_projection, self.cfg.ensemble)

    def predict(self, x):
        return self.forward_and_adapt(x)
