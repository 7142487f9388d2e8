"""Domain-mixture continued pre-training: every batch mixes the current domain with earlier ones by
the weights of a ``MixtureScheduler`` (strategies/_mixture.py).

- ``scheduler=static``: fixed weights, e.g. ``{current: 0.7, english_web: 0.3}`` (Guo et al. 2024's
  third strategy: keep the mixture close to the pre-training data).
- ``scheduler=staged``: a curriculum of stages (Llama-3-SynE, Chen et al. 2024, arXiv 2407.18743).
- ``scheduler=odm``: Online Data Mixing (Albalak et al. 2023, arXiv 2312.02406), an EXP3 bandit
  that re-weights domains from their training losses: the adaptive baseline.
- ``scheduler=package.module:Class``: your own (e.g. a Data Mixing Agent, 2025). If its
  ``wants_eval`` is true, it also receives the held-out loss of every available domain every
  ``feedback_every`` steps (``observe("eval", step, losses)``).

The batch size and the number of steps are those of plain continued pre-training (the same
compute): the windows of earlier domains replace some of the current domain's. Per-batch counts
come from ``cl.tokens.apportion`` (exact shares over time). Needs a token scenario (text_domains).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from cl.tokens import MixedTokens, mean_token_loss
from strategies._mixture import SeenDomains, check_names, check_token_stream, make_scheduler, per_domain_losses


@dataclass
class DomainMixtureConfig(StrategyConfig):
    name: str = "domain_mixture"
    optimizer: str = "adamw"        # GPT-3 (Brown et al. 2020, App. B): Adam(W), betas (0.9, 0.95), wd 0.1
    lr: float = 6e-4                # GPT-3 Small (125M), Table 2.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    eval_batch_size: int = 16
    scheduler: str = "static"       # static | staged | odm | package.module:Class
    weights: Dict[str, Any] = field(default_factory=dict)   # static (odm: initial): {domain|current|previous: w}
    stages: List[Any] = field(default_factory=list)          # staged: [{experience?, until?, weights}]
    scheduler_args: Dict[str, Any] = field(default_factory=dict)  # odm: warmup_steps, reward_scale; custom: kwargs
    feedback_every: int = 0         # held-out loss to schedulers that want it, every N steps (0: never)
    feedback_tokens: int = 0        # held-out tokens per domain for that feedback (0: all evaluation windows)


@STRATEGIES.register("domain_mixture")
class DomainMixture(Strategy):
    """Continued pre-training on a per-batch mixture of the current and earlier text domains."""

    Config = DomainMixtureConfig
    needs_boundaries = "the available domains change at each experience start"
    needs_tokens = "it mixes token windows of several text domains"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_token_stream(self.stream, "domain_mixture")
        self.scheduler = make_scheduler(self.cfg)
        self.seen = SeenDomains()
        self.current, self.experience, self.step_in_exp = "", 0, 0
        self.windows = {}                       # domain -> windows trained on (all experiences)
        self.history = []                       # per experience: {domain: windows}

    def before_experience(self, exp):
        self.seen.add(exp)
        self.current, self.experience, self.step_in_exp = exp.domain, exp.index, 0
        self._check_names(final=exp.index == self.stream.num_experiences - 1)
        self.scheduler.begin_experience(list(self.seen.names), exp.index)
        self.history.append({})

    def _check_names(self, final):
        """At the last experience every named domain must have appeared (a typo is an error, not a 0 weight)."""
        specs = [self.cfg.weights] + [dict(s).get("weights", {}) for s in self.cfg.stages]
        if final:
            for spec in specs:
                check_names(spec, self.seen.names, "strategy.weights/stages")

    def train_data(self, exp):
        steps = (self.stream.steps_per_experience[exp.index] if self.stream.steps_per_experience
                 else exp.train.num_batches(self.cfg.batch_size))

        def weights(step):
            return self.scheduler.weights(list(self.seen.names), self.current, self.experience,
                                          step / max(steps, 1))
        return MixedTokens(self.seen.train, weights, num_windows=len(exp.train), groups=range(len(self.seen.names)),
                           on_counts=self._count)

    def _count(self, step, counts):
        row = self.history[-1]
        for name, c in zip(self.seen.names, counts):
            row[name] = row.get(name, 0) + int(c)
            self.windows[name] = self.windows.get(name, 0) + int(c)

    def loss(self, batch):
        logits = self.model(batch.x)
        token_losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.y.reshape(-1),
                                       reduction="none").view_as(batch.y)
        self._last = (token_losses.detach(), batch.g)
        return token_losses.mean()

    def after_step(self, batch):
        self.step_in_exp += 1
        losses, groups = self._last
        self.scheduler.observe("train", self.step_in_exp,
                               {self.seen.names[g]: v for g, v in per_domain_losses(losses, groups).items()})
        every = self.cfg.feedback_every
        if every and self.scheduler.wants_eval and self.step_in_exp % every == 0:
            self.scheduler.observe("eval", self.step_in_exp, self.held_out_losses())

    @torch.no_grad()
    def held_out_losses(self):
        """{domain: mean held-out loss} over the available domains (the model is left in train mode)."""
        out = {}
        for name, test in zip(self.seen.names, self.seen.test):
            if self.cfg.feedback_tokens:
                n = max(1, min(len(test), self.cfg.feedback_tokens // test.context))
                test = test.subset(torch.arange(n))
            out[name] = mean_token_loss(self, test, self.cfg.eval_batch_size, self.device, self.num_classes)
        self.model.train()
        return out

    def extra_state(self):
        return {"seen": self.seen.state(), "scheduler": self.scheduler.state_dict(), "windows": dict(self.windows),
                "history": list(self.history)}

    def load_extra_state(self, state):
        if "seen" in state:
            self.seen.load(state["seen"])
        self.scheduler.load_state_dict(state.get("scheduler", {}))
        self.windows, self.history = dict(state.get("windows", {})), list(state.get("history", []))

    def results(self):
        total = sum(self.windows.values()) or 1
        return {"mixture_windows": dict(self.windows), "mixture_share": {k: v / total for k, v in self.windows.items()},
                "mixture_windows_per_experience": list(self.history)}
