"""SAR: sharpness-aware and reliable entropy minimization, with model recovery.

S. Niu, J. Wu, Y. Zhang, Z. Wen, Y. Chen, P. Zhao, M. Tan, "Towards Stable Test-Time Adaptation
in Dynamic Wild World", ICLR 2023 (arXiv:2302.12400). Follows the RMT authors' benchmark
(mariodoebler/test-time-adaptation ``classification/methods/sar.py``, built on mr-eggplant/SAR).

Per test batch (normalization affine parameters trained, BatchNorm with batch statistics, the
top layers -- ``layer4`` of a ResNet, blocks 9-11 and the final norm of a ViT -- left frozen):
  1. reliable samples S = {x : H(x) < E0 = ``margin_e0`` * ln K} (Eq. 2); L = mean_S H(x);
  2. SAM (Foret et al. 2021) first step: theta + rho * g / (||g|| + 1e-12), g = grad L (Eq. 4);
  3. at the perturbed weights, the entropies of S again, the samples still below E0 kept, their
     mean entropy L'; the gradient of L' is applied at the original weights by SGD (Eq. 5);
  4. model recovery: e <- 0.9 e + 0.1 L' (moving average, skipped when L' is NaN); when e falls
     below ``reset_constant_em`` the weights and optimizer are restored and e is cleared.
The prediction is the one made before the step. SAR runs in full precision (the authors' SAR
has no mixed-precision path).

Recovery and episodic resets restore the weights; the SGD momentum buffers survive them, as in
the authors' code, whose SAM wrapper's ``state_dict`` does not hold the inner SGD's state.

Defaults: the optimizer is SGD with momentum 0.9 whatever ``OPTIM.METHOD`` says (the method's
``setup_optimizer``), at ``cfgs/cifar10_c/sar.yaml`` OPTIM.LR 1e-3 (ImageNet-C: 0.00025; the
authors switch to lr 0.001 for ViT/Swin), batch 200 (ImageNet-C: 64); ``conf.py``: rho 0.05 (SAM
default), EATA.MARGIN_E0 0.4, SAR.RESET_CONSTANT_EM 0.2.
"""
import math
from dataclasses import dataclass

import torch

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import configure_norm_adaptation, softmax_entropy


@dataclass
class SARConfig(StrategyConfig):
    name: str = "sar"
    optimizer: str = "sgd"           # methods/sar.py setup_optimizer: SAM around SGD (OPTIM.METHOD ignored)
    lr: float = 1e-3                 # cfgs/cifar10_c/sar.yaml OPTIM.LR 1e-3 (ImageNet-C 0.00025)
    momentum: float = 0.9            # conf.py OPTIM.MOMENTUM 0.9
    batch_size: int = 200            # TEST.BATCH_SIZE 200 (ImageNet-C 64)
    eval_batch_size: int = 200
    rho: float = 0.05                # SAM neighbourhood size (SAM class default)
    margin_e0: float = 0.4           # conf.py EATA.MARGIN_E0, times ln(num_classes)
    reset_constant_em: float = 0.2   # conf.py SAR.RESET_CONSTANT_EM
    skip_top_layers: bool = True     # methods/sar.py collect_params leaves layer4 / blocks 9-11 / norm out


@STRATEGIES.register("sar")
class SAR(Strategy):
    """Reliable entropy minimization with a sharpness-aware (SAM) step and model recovery."""

    protocols = ("online",)

    Config = SARConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.optimizer != "sgd":
            raise ConfigError(f"sar takes its SAM steps with SGD (as the authors); strategy.optimizer must be "
                              f"'sgd', got '{cfg.optimizer}'.")
        if cfg.rho < 0:
            raise ConfigError(f"strategy.rho must be >= 0, got {cfg.rho}.")
        self.margin = cfg.margin_e0 * math.log(self.num_classes)
        self.ema = None                  # moving average of L' (model recovery)
        self.recoveries = 0

    def configure_model(self):
        configure_norm_adaptation(self.model, "sar", skip_top=self.cfg.skip_top_layers)

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def ascend(self, params):
        """SAM's first step: move each parameter by rho * grad / ||grad||; returns the old values."""
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)
        scale = self.cfg.rho / (norm + 1e-12)
        old = []
        for p in params:
            old.append(p.data.clone() if p.grad is not None else None)
            if p.grad is not None:
                p.add_(1.0 * p.grad * scale.to(p))
        return old

    def forward_and_adapt(self, x):
        params = self.parameters_to_train()
        self.optimizer.zero_grad()
        with torch.enable_grad():
            logits = self.model(x)
            ent = softmax_entropy(logits)
            keep = torch.where(ent < self.margin)
            ent[keep].mean(0).backward()
            old = self.ascend(params)
            self.optimizer.zero_grad()
            ent2 = softmax_entropy(self.model(x))[keep]
            loss2 = ent2[torch.where(ent2 < self.margin)].mean(0)
            if not math.isnan(loss2.item()):
                self.ema = loss2.item() if self.ema is None else 0.9 * self.ema + (1 - 0.9) * loss2.item()
            loss2.backward()
        for p, p_old in zip(params, old):
            if p_old is not None:
                p.data = p_old
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.updates += 1
        if self.ema is not None and self.ema < self.cfg.reset_constant_em:
            self.recover()
        return logits.detach()

    def recover(self):
        """Model recovery: weights and e back to the start; the update count and SGD momentum go on."""
        updates = self.updates
        self.reset()
        self.updates = updates
        self.recoveries += 1

    def reset(self):
        inner = dict(self.optimizer.state)      # the SGD momentum survives (see the module docstring)
        recoveries = self.recoveries
        super().reset()                         # weights, optimizer, e = None
        self.optimizer.state.update(inner)
        self.recoveries = recoveries

    def extra_state(self):
        return {"ema": self.ema, "recoveries": self.recoveries}

    def load_extra_state(self, state):
        self.ema = state["ema"]
        self.recoveries = int(state["recoveries"])

    def results(self):
        return {"model_recoveries": self.recoveries}
