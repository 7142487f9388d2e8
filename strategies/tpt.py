"""TPT: test-time prompt tuning of CLIP, episodic, one test image at a time.

Shu et al., "Test-Time Prompt Tuning for Zero-Shot Generalization in Vision-Language Models",
NeurIPS 2022 (arXiv 2209.07511); code azshue/TPT. Defaults: ``tpt_classification.py`` argparse and
``scripts/test_tpt.sh`` (``-b 64 --ctx_init a_photo_of_a --tpt``). For each test image, starting
from the initial prompt (``model.reset()`` and the optimizer's initial state, every image):

1. views = the image + ``n_views`` augmented views (random resized crops + flips; AugMix mixed in for
   the fine-grained sets, strategies/_tpt_views.py);
2. ``steps`` times: logits of every view with the learned context "<ctx> <class name>.", keep the
   ``selection`` fraction with the lowest entropy (chosen at the first step), minimize the entropy
   of their averaged prediction (``avg_entropy``) w.r.t. the context only (AdamW, lr 5e-3);
3. predict the image with the tuned context.

Only the context vectors (initialised from the token embeddings of ``ctx_init``) are trained; both
CLIP towers are frozen. Needs a CLIP model (``model.name=clip``). Online protocol.
"""
import copy
from dataclasses import dataclass

import torch

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.models.clip import clip_of
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._tpt_views import avg_entropy, select_confident, tpt_views


@dataclass
class TPTConfig(StrategyConfig):
    name: str = "tpt"
    optimizer: str = "adamw"          # tpt_classification.py: torch.optim.AdamW(prompt_learner.parameters(), args.lr)
    lr: float = 5e-3                  # --lr 5e-3
    weight_decay: float = 0.01        # torch AdamW's default (TPT passes only the lr)
    batch_size: int = 16              # test images per stream batch (TPT loads one; each is tuned on its own)
    eval_batch_size: int = 64
    n_views: int = 63                 # test_tpt.sh -b 64: the image + 63 augmented views
    steps: int = 1                    # --tta_steps 1
    selection: float = 0.1            # --selection_p 0.1: lowest-entropy fraction of the views kept
    ctx_init: str = "a photo of a"    # test_tpt.sh --ctx_init a_photo_of_a
    augmix: bool = False              # AugMix views (TPT: fine-grained sets, len(set_id) > 1); false: ImageNet variants


@STRATEGIES.register("tpt")
class TPT(Strategy):
    """Episodic per-image tuning of CLIP's prompt context by entropy of the confident augmented views."""

    Config = TPTConfig
    protocols = ("online",)

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        self.clip = clip_of(model, type(self).__name__)
        if cfg.n_views < 1 or cfg.steps < 1:
            raise ConfigError("tpt needs n_views >= 1 and steps >= 1.")
        self._optim_init = None

    # ------------------------------------------------------------------ set-up
    def configure_model(self):
        self.model.eval()                     # TPT: model.eval() (frozen BatchNorm of RN50 towers)
        self.model.requires_grad_(False)
        self.clip.enable_context(self.cfg.ctx_init).requires_grad_(True)

    def parameters_to_train(self):
        return [self.clip.context]

    def warm_up(self, source):
        self.check_selection()
        self._optim_init = copy.deepcopy(self.optimizer.state_dict())

    def check_selection(self):
        """A ConfigError unless the selection keeps at least one view."""
        s = self.cfg.selection
        if not 0 < s <= 1 or int((self.cfg.n_views + 1) * s) < 1:
            raise ConfigError(f"strategy.selection={s} keeps no view of {self.cfg.n_views + 1}; it must be in (0, 1] "
                              "and large enough for the number of views.")

    # ------------------------------------------------------------------ one image
    @torch.no_grad()
    def reset_prompt(self):
        """TPT ``model.reset()`` + ``optimizer.load_state_dict(optim_state)``: back to the initial prompt."""
        self.clip.context.copy_(self.clip.context_init)
        self.optimizer.load_state_dict(self._optim_init)

    def views(self, x):
        """[1 + V, C, H, W]: the image first, then its augmented views."""
        return torch.cat([x[None], tpt_views(x, self.cfg.n_views, self.cfg.augmix)])

    def select(self, logits):
        return select_confident(logits, self.cfg.selection)

    @torch.enable_grad()
    def tune(self, views):
        """``steps`` AdamW steps on the averaged entropy of the confident views (chosen at step 1)."""
        chosen = None
        for _ in range(self.cfg.steps):
            with self.autocast():
                logits = self.model(views).float()
            if chosen is None:
                chosen = self.select(logits.detach())
            self.optimize(avg_entropy(logits[chosen]))

    def forward_and_adapt(self, x):
        """Per image: reset, tune on its views, predict it with the tuned prompt."""
        out = []
        for xi in x:
            self.reset_prompt()
            self.tune(self.views(xi))
            with torch.no_grad(), self.autocast():
                out.append(self.model(xi[None]).float())
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, x):
        """The initial prompt's prediction (between images the episodic model is the initial one)."""
        tuned = self.clip.context.detach().clone()
        self.clip.context.copy_(self.clip.context_init)
        try:
            return super().predict(x)
        finally:
            self.clip.context.copy_(tuned)
