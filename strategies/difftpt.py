"""DiffTPT: TPT with Stable-Diffusion image variations added to the augmented views and a cosine
filter before the entropy selection.

Feng et al., "Diverse Data Augmentation with Diffusions for Effective Test-time Prompt Tuning",
ICCV 2023 (arXiv 2308.06038); code chunmeifeng/DiffTPT. Defaults: ``scripts/do_tpt_difftpt.sh``
(``-b 64 --ctx_init a_photo_of_a --aug_mode difftpt --selection_cosine 0.8 --selection_selfentro 0.3
--lr 5e-3 --tta_steps 4``), ``tpt_classification.py`` (difftpt: ``AugMixAugmenter(n_views=64)``) and
``difftpt_utils.py`` (63 generated views: ``view_num=args.batch_size-1``). Per test image:

1. views = [image, 64 augmented views (as TPT), 63 diffusion views] (strategies/_diffusion_views.py:
   a diffusers pipeline, cached by image content);
2. selection at the first step (``select_confident_samples_cosine``): the 80% of views whose logits
   are most cosine-similar to the image's, plus the image, then the 30% of those with the lowest
   entropy;
3. 4 AdamW steps (lr 5e-3) on the entropy of their averaged prediction w.r.t. the prompt context;
   predict the image with the tuned prompt (episodic: reset before the next image).
"""
from dataclasses import dataclass

import torch

from cl.errors import ConfigError
from cl.registry import STRATEGIES
from strategies._diffusion_views import DiffusionViews
from strategies._tpt_views import select_cosine_then_entropy
from strategies.tpt import TPT, TPTConfig


@dataclass
class DiffTPTConfig(TPTConfig):
    name: str = "difftpt"
    n_views: int = 64                 # tpt_classification.py (difftpt): AugMixAugmenter(n_views=args.batch_size=64)
    diffusion_views: int = 63         # difftpt_utils.get_data_loader: view_num=args.batch_size-1
    steps: int = 4                    # do_tpt_difftpt.sh --tta_steps 4
    cosine_selection: float = 0.8     # --selection_cosine 0.8
    entropy_selection: float = 0.3    # --selection_selfentro 0.3
    pipeline: str = "lambdalabs/sd-image-variations-diffusers"   # image_generator_R.py (or a local folder, tiny-random)
    pipeline_revision: str = "v2.0"   # image_generator_R.py: from_pretrained(..., revision="v2.0")
    guidance_scale: float = 3.0       # image_generator_R.py: pipe(images, guidance_scale=3)
    num_inference_steps: int = 50     # the pipeline's default (image_generator_R.py passes none)
    cache_dir: str = ""               # generated views as <cache_dir>/<sha256>.pt ("": regenerated when needed)
    generation_batch: int = 16        # images per pipeline call (GPU memory)


@STRATEGIES.register("difftpt")
class DiffTPT(TPT):
    """TPT on augmented + diffusion-generated views, selected by cosine similarity to the image then entropy."""

    Config = DiffTPTConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.diffusion_views < 0:
            raise ConfigError(f"strategy.diffusion_views must be >= 0, got {cfg.diffusion_views}.")
        self.generator = DiffusionViews(cfg.pipeline, cfg.diffusion_views, cfg.guidance_scale, cfg.num_inference_steps,
                                        cfg.cache_dir, cfg.pipeline_revision, device=self.device,
                                        chunk=cfg.generation_batch)

    def check_selection(self):
        c = self.cfg
        n = c.n_views + c.diffusion_views
        if not (0 < c.cosine_selection <= 1 and 0 < c.entropy_selection <= 1) or \
                int((int(n * c.cosine_selection) + 1) * c.entropy_selection) < 1:
            raise ConfigError(f"difftpt's selections (cosine {c.cosine_selection}, entropy {c.entropy_selection}) must be "
                              f"in (0, 1] and keep at least one of the {n + 1} views; raise them or the view counts.")

    def forward_and_adapt(self, x):
        if self.cfg.diffusion_views:
            self.generator.get_many(x)        # generate the batch's missing views in one pipeline call
        return super().forward_and_adapt(x)

    def views(self, x):
        """[image, augmented views, diffusion views]."""
        base = super().views(x)
        if self.cfg.diffusion_views == 0:
            return base
        return torch.cat([base, self.generator.get(x)])

    def select(self, logits):
        return select_cosine_then_entropy(logits, self.cfg.cosine_selection, self.cfg.entropy_selection)

    def warm_up(self, source):
        super().warm_up(source)
        if not self.cfg.cache_dir and self.cfg.diffusion_views:
            self.generator.load()     # fail now (ConfigError), not mid-stream; with a cache, load on the first miss
