"""Online Elastic Weight Consolidation (EWC-on).

Papers: Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017,
arXiv 1612.00796; online variant: Schwarz et al., "Progress & Compress: A scalable framework for
continual learning", ICML 2018, arXiv 1805.06370.

Follows Mammoth's ``models/ewc_on.py`` (the oEWC rows of the DER paper's tables; ``end_task``):

- Fisher, at the end of each experience, over that experience's training data (augmented, as
  Mammoth's ``train_loader``): for every example, F += p(y|x) * (d log p(y|x) / d theta)^2 with y
  the true label -- the empirical Fisher weighted by the model's confidence -- divided by the
  number of examples. The network is in **train mode**, as in Mammoth, whose training loop
  (``utils/training.py``) leaves ``net.train()`` on when it calls ``end_task``: each example goes
  through alone, so every BatchNorm layer normalises it with that one example's own statistics
  (and dropout, if any, is active). Per-example gradients come from ``torch.func`` (vmap over
  grad) on a copy of the network whose BatchNorm layers keep no running statistics.
- Online accumulation: F* <- gamma * F* + F; one anchor theta* = the weights at the experience end.
- Penalty: ``lambda * sum_i F*_i (theta_i - theta*_i)^2``, with no 1/2 (Mammoth; the PNAS paper
  writes lambda/2) and no extra gamma inside the norm (Progress & Compress has one). It is exactly
  zero at the anchor weights.

Where we differ from Mammoth, on purpose:

- Mammoth's single-example train-mode passes also *update* BatchNorm's running statistics, N
  times with one image's statistics each, so the model evaluated after ``end_task`` is not the
  one that was trained (its running variances shrink towards the within-image variances). Here
  the Fisher leaves the model untouched: running statistics and every weight are as training
  left them.
- Mammoth divides the sum by ``len(train_loader) * batch_size`` (the last, partial batch counted
  as full); we divide by the number of examples (0.16% apart for a 10,000-image task in batches
  of 32).

Defaults (Mammoth ``best_args`` seq-cifar10): e_lambda 10, gamma 1.0, lr 0.03, batch 32.

Token windows (language models): log p(y|x) is the mean next-token log-likelihood of the window
and the weight p(y|x) its exponential (the per-token geometric-mean probability), so the same
estimate applies to ``text_domains`` runs (``fisher_max_samples`` bounds its cost).

Boundaries: the Fisher and anchor are taken at the experience end (``needs_boundaries``): a run
with ``hide_boundaries=true`` stops before training.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from cl.tokens import token_cross_entropy


@dataclass
class EWCConfig(StrategyConfig):
    name: str = "ewc"
    lr: float = 0.03                # Mammoth best args, seq-cifar10 (ewc_on)
    e_lambda: float = 10.0          # penalty weight; idem
    gamma: float = 1.0              # Fisher decay of the online accumulation; idem
    fisher_batch_size: int = 64     # examples per vmap chunk when estimating the Fisher (speed/memory only)
    fisher_max_samples: int = 0     # 0: the whole experience (Mammoth); N: a seeded subset of N examples


def example_log_lik(out, y):
    """log p(y|x) per example: class logits [N, C] with labels [N], or next-token logits [N, T, V]
    with targets [N, T] (then the mean over the window's tokens)."""
    lp = F.log_softmax(out.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return lp if lp.dim() == 1 else lp.mean(1)


@STRATEGIES.register("ewc")
class EWC(Strategy):
    """Online EWC: quadratic penalty to the last anchor, weighted by a decayed running Fisher."""

    Config = EWCConfig
    needs_boundaries = "the Fisher is estimated at each experience end"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.e_lambda < 0 or not 0 <= self.cfg.gamma <= 1:
            raise ConfigError(f"ewc needs strategy.e_lambda >= 0 and 0 <= strategy.gamma <= 1, got "
                              f"{self.cfg.e_lambda} and {self.cfg.gamma}.")
        self.fisher = {}              # name -> running Fisher F*
        self.anchor = {}              # name -> theta*

    def penalty(self):
        """lambda * sum F* (theta - theta*)^2 (a 0-dim tensor; 0 before the first experience ends)."""
        total = torch.zeros((), device=self.device)
        if not self.fisher:
            return total
        for name, p in self.model.named_parameters():
            if name in self.fisher:
                total = total + (self.fisher[name] * (p.float() - self.anchor[name]).pow(2)).sum()
        return self.cfg.e_lambda * total

    def loss(self, batch):
        loss = token_cross_entropy(self.model(batch.x), batch.y)
        return loss + self.penalty() if self.fisher else loss

    def after_experience(self, exp):
        new = self.estimate_fisher(exp.train)
        for name, f in new.items():
            self.fisher[name] = self.cfg.gamma * self.fisher[name] + f if name in self.fisher else f
        self.anchor = {n: p.detach().float().clone() for n, p in self.model.named_parameters() if n in new}

    def estimate_fisher(self, data):
        """{param name: mean over examples of p(y|x) * grad(log p(y|x))^2} for trainable parameters,
        with the network in train mode, one example at a time (see the module docstring). The
        model itself (weights, BatchNorm running statistics) is not modified."""
        model = self.model
        twin = copy.deepcopy(model).train()
        replace_all_batch_norm_modules_(twin)      # batch statistics of the one example, no running stats
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in twin.named_buffers()}

        def log_lik(p, x, y):
            out = functional_call(twin, (p, buffers), (x.unsqueeze(0),))
            ll = example_log_lik(out, y.unsqueeze(0)).squeeze(0)
            return ll, ll.detach()

        grad_and_ll = vmap(grad(log_lik, has_aux=True), in_dims=(None, 0, 0), randomness="different")
        if self.cfg.fisher_max_samples and len(data) > self.cfg.fisher_max_samples:
            g = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
            data = data.subset(torch.randperm(len(data), generator=g)[: self.cfg.fisher_max_samples])
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        count = 0
        for batch in data.batches(self.cfg.fisher_batch_size, device=self.device):
            grads, ll = grad_and_ll(params, batch.x, batch.y)
            prob = ll.exp()                                                     # p(y|x), same forward pass
            for n, gr in grads.items():
                w = prob.view(-1, *([1] * (gr.dim() - 1)))
                fisher[n] += (w * gr.float().pow(2)).sum(0)
            count += len(batch.y)
        return {n: f / max(count, 1) for n, f in fisher.items()}

    def extra_state(self):
        return {"fisher": dict(self.fisher), "anchor": dict(self.anchor)}

    def load_extra_state(self, state):
        self.fisher = {n: t.to(self.device) for n, t in state.get("fisher", {}).items()}
        self.anchor = {n: t.to(self.device) for n, t in state.get("anchor", {}).items()}

    def results(self):
        return {"fisher_total": float(sum(f.sum() for f in self.fisher.values())) if self.fisher else 0.0}
