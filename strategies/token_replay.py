"""Fractional replay for continued pre-training of language models.

Paper: Ibrahim, Thérien, Gupta, Richter, Anthony, Lesort, Belilovsky & Rish, "Simple and Scalable
Strategies to Continually Pre-train Large Language Models", TMLR 2024, arXiv 2403.08763: LR
re-warming + re-decaying + replay of previous data matches re-training on the union. A fixed
share of every batch is drawn from the earlier domains' training tokens; the paper finds ~5%
enough for a weak shift (Pile -> SlimPajama) and ~25% needed for a strong one (English -> German).

Every step keeps the batch size and the step count of plain continued pre-training (the same
compute: replayed windows replace some of the current domain's). ``replay_fraction`` of the
windows are replayed, exactly over time (``cl.tokens.apportion``: with batch 16 and 5%, the replay
count per batch is 0 or 1 and 5% of all windows); the replayed windows are split over the
earlier domains evenly (``replay_weighting=uniform``) or by their training tokens (``tokens``).
Needs a token scenario (text_domains); combine with an LR schedule for re-warming/re-decaying.
"""
from dataclasses import dataclass, field
from typing import List

import numpy as np

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from cl.tokens import MixedTokens
from strategies._mixture import SeenDomains, check_token_stream


@dataclass
class TokenReplayConfig(StrategyConfig):
    name: str = "token_replay"
    optimizer: str = "adamw"        # GPT-3 (Brown et al. 2020, App. B): Adam(W), betas (0.9, 0.95), wd 0.1
    lr: float = 6e-4                # GPT-3 Small (125M), Table 2.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    eval_batch_size: int = 16
    replay_fraction: float = 0.05   # Ibrahim et al. 2024: 5% for a weak shift, 25% for English -> German
    replay_weighting: str = "uniform"   # uniform over earlier domains | tokens (by their training tokens)


@STRATEGIES.register("token_replay")
class TokenReplay(Strategy):
    """Continued pre-training with a fixed fraction of every batch replayed from earlier domains."""

    Config = TokenReplayConfig
    needs_boundaries = "earlier domains are known at each experience start"
    needs_tokens = "it replays token windows of earlier text domains"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_token_stream(self.stream, "token_replay")
        c = self.cfg
        if not 0 <= c.replay_fraction < 1:
            raise ConfigError(f"strategy.replay_fraction must be in [0, 1), got {c.replay_fraction}.")
        if c.replay_weighting not in ("uniform", "tokens"):
            raise ConfigError(f"strategy.replay_weighting must be uniform or tokens, got '{c.replay_weighting}'.")
        self.seen = SeenDomains()
        self.replayed = {}                      # domain -> windows replayed (all experiences)
        self.current_windows = 0

    def before_experience(self, exp):
        self.seen.add(exp)

    def replay_weights(self, current):
        """Weights over the seen domains: 1 - f on ``current``, f split over the others."""
        w = np.zeros(len(self.seen.names))
        k = self.seen.names.index(current)
        others = [j for j in range(len(w)) if j != k]
        w[k] = 1.0
        if others and self.cfg.replay_fraction > 0:
            share = np.array([1.0 if self.cfg.replay_weighting == "uniform" else self.seen.train[j].num_tokens
                              for j in others], dtype=float)
            w[k] = 1 - self.cfg.replay_fraction
            w[others] = self.cfg.replay_fraction * share / share.sum()
        return w

    def train_data(self, exp):
        w = self.replay_weights(exp.domain)
        if w[self.seen.names.index(exp.domain)] == 1.0:
            return exp.train                    # nothing to replay yet
        return MixedTokens(self.seen.train, lambda step: w, num_windows=len(exp.train),
                           groups=range(len(w)), on_counts=lambda step, counts: self._count(exp.domain, counts))

    def _count(self, current, counts):
        for name, c in zip(self.seen.names, counts):
            if name == current:
                self.current_windows += int(c)
            else:
                self.replayed[name] = self.replayed.get(name, 0) + int(c)

    def extra_state(self):
        return {"seen": self.seen.state(), "replayed": dict(self.replayed), "current_windows": self.current_windows}

    def load_extra_state(self, state):
        if "seen" in state:
            self.seen.load(state["seen"])
        self.replayed, self.current_windows = dict(state.get("replayed", {})), int(state.get("current_windows", 0))

    def results(self):
        replayed = sum(self.replayed.values())
        total = replayed + self.current_windows
        return {"replayed_windows": dict(self.replayed),
                "replayed_fraction": replayed / total if total else 0.0}
