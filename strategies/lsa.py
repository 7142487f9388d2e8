"""Label Shift Adapter (LSA) plugged into source / BN / Tent test-time adaptation.

S. Park, S. Yang, J. Choo, S. Yun, "Label Shift Adapter for Test-Time Adaptation under Covariate
and Label Shifts", ICCV 2023 (arXiv:2308.08810). The authors released no code, and the method
section of the paper could not be read from this environment (only the abstract and summaries:
"a label shift adapter, trained before deployment with the source model frozen, produces the
parameters of a small part of the model -- classifier weights and feature scaling -- from the
target label distribution; trained with a generalized logit-adjusted loss; the label distribution
is mapped to a scalar imbalance degree for stable training; at test time the target label
distribution is estimated batch by batch and fed to the adapter, inside an existing TTA method").
What follows is OUR READING of that description; every default below is ours, not the paper's.

Model split: ``phi(x)`` = the input of the classifier head (a ``nn.Linear`` W, b), found by
``cl.models.features``. The adapter is an MLP ``u -> [log s (D), log a (K), c (K)]`` with input
``u = log pi - log pi_src`` (the target label distribution relative to the source's; 0 when the
two agree) and the adapted logits

    z_k(x; pi) = a_k * (W_k . (s * phi(x))) + b_k + c_k

(feature scaling s, per-class classifier weight scaling a, per-class offset c). The adapter's last
layer starts at zero, so before training (and for pi = pi_src after training, approximately) z is
the source model's logits.

Adapter training (``warm_up``, source data, source model frozen in eval mode, features computed
once): each step draws ``adapter_batch`` source samples and, per sample, a target distribution
pi_t from the long-tailed family indexed by the scalar imbalance degree rho (our reading of
"mapped to a scalar imbalance degree"): rho log-uniform in [1, ``max_imbalance``], classes in a
random order r, pi_t,k proportional to rho ** (-r_k / (K - 1)); with probability
``dirichlet_fraction`` pi_t ~ Dir(``dirichlet_concentration``) instead, so the adapter also sees
non-monotone priors. Loss: the logit-adjusted cross-entropy of Menon et al. (ICLR 2021) generalized
to a source prior and a target prior,

    CE( z(x; pi_t) + tau * (log pi_src - log pi_t), y ),   (x, y) ~ source,

whose minimizer makes softmax(z) the posterior under pi_t when the frozen model is the posterior
under pi_src (tau = 1 is Bayes' rule; ``tau`` is the "generalized" knob).

Test time, per batch (the adapter is frozen): features and source logits from one forward of the
model (eval mode for ``base=source``; test-batch BatchNorm statistics for ``bn`` and ``tent``);
the label distribution estimate is updated with the batch's mean adapted prediction,
pi_hat <- m * pi_hat + (1 - m) * mean softmax(z(x; pi_hat)) (m = ``prior_momentum``, pi_hat
starts at pi_src), and the returned logits are z(x; pi_hat) with the updated estimate. With
``base=tent`` one Adam step on the mean entropy of those logits updates the BatchNorm affine
parameters (Tent's defaults, ``strategies/tent.py``). ``reset`` returns pi_hat to pi_src.
"""
import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.models.features import classifier_head, features_and_logits
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import norm_affine_parameters, softmax_entropy, source_subset, use_batch_statistics

BASES = ("source", "bn", "tent")


@dataclass
class LSAConfig(StrategyConfig):
    name: str = "lsa"
    base: str = "tent"               # the TTA method LSA plugs into: source | bn | tent (ours; the paper plugs into several)
    optimizer: str = "adam"          # base=tent: Tent's CIFAR-10-C config (tent cfgs/tent.yaml: Adam, lr 1e-3, beta 0.9)
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 200            # Tent's TEST.BATCH_SIZE 200
    eval_batch_size: int = 200
    adapter_hidden: int = 128        # adapter MLP width (ours)
    adapter_steps: int = 1000        # adapter training steps on source features (ours)
    adapter_batch: int = 256         # source samples per adapter step, each with its own sampled prior (ours)
    adapter_lr: float = 1e-3         # Adam (ours)
    adapter_seed: int = 0            # seed of the adapter's initialization, sampled priors and batches
    source_samples: int = 10000      # seeded source subset whose features train the adapter (-1: all)
    max_imbalance: float = 100.0     # largest imbalance degree rho of the sampled long-tailed priors (ours)
    dirichlet_fraction: float = 0.5  # share of sampled priors drawn from a Dirichlet instead (ours)
    dirichlet_concentration: float = 1.0
    tau: float = 1.0                 # generalized logit adjustment strength (1: Bayes' rule)
    prior_momentum: float = 0.9      # EMA of the batch-wise label distribution estimate (ours)


class LabelShiftAdapter(nn.Module):
    """``u [N, K] -> (s [N, D], a [N, K], c [N, K])``: feature scale, class-weight scale, class offset."""

    def __init__(self, num_classes, feat_dim, hidden):
        super().__init__()
        self.num_classes, self.feat_dim = int(num_classes), int(feat_dim)
        self.net = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, feat_dim + 2 * num_classes))
        nn.init.zeros_(self.net[-1].weight)        # identity adapter at the start
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, u):
        out = self.net(u)
        d, k = self.feat_dim, self.num_classes
        return out[:, :d].exp(), out[:, d:d + k].exp(), out[:, d + k:]


def adapted_logits(features, head, scale, class_scale, offset):
    """z = a * (W (s * phi)) + b + c for features [B, D] and adapter outputs broadcastable to [B, .]."""
    z = F.linear(features * scale, head.weight) * class_scale
    if head.bias is not None:
        z = z + head.bias
    return z + offset


def logit_adjusted_loss(logits, y, log_prior_src, log_prior_tgt, tau=1.0):
    """CE(z + tau * (log pi_src - log pi_tgt), y), the priors broadcastable to ``logits`` [B, K]."""
    return F.cross_entropy(logits + tau * (log_prior_src - log_prior_tgt), y)


def sample_priors(n, num_classes, max_imbalance, dirichlet_fraction, concentration, generator):
    """[n, K] label distributions: long-tailed with a log-uniform imbalance degree in [1, max_imbalance] and
    a random class order, or (with probability ``dirichlet_fraction``) Dirichlet(concentration)."""
    k = num_classes
    rho = torch.exp(torch.rand(n, 1, generator=generator) * math.log(max_imbalance))
    ranks = torch.argsort(torch.rand(n, k, generator=generator), dim=1).float()
    lt = rho ** (-ranks / max(k - 1, 1))
    lt = lt / lt.sum(1, keepdim=True)
    gamma = torch.distributions.Gamma(torch.full((n, k), float(concentration)), torch.ones(n, k))
    # Gamma sampling has no generator argument: draw it from a fork of the seeded stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))
        g = gamma.sample().clamp_min(1e-12)
    dirichlet = g / g.sum(1, keepdim=True)
    pick = torch.rand(n, 1, generator=generator) < dirichlet_fraction
    return torch.where(pick, dirichlet, lt)


@STRATEGIES.register("lsa")
class LSA(Strategy):
    """A label-distribution-conditioned adapter of the classifier, inside source / BN / Tent."""

    protocols = ("online",)
    needs_source = "the label shift adapter is trained on labelled source data before deployment"
    Config = LSAConfig

    def configure_model(self):
        c = self.cfg
        if c.base not in BASES:
            raise ConfigError(f"strategy.base must be one of {', '.join(BASES)}, got '{c.base}'.")
        if not 0 <= c.prior_momentum < 1:
            raise ConfigError(f"strategy.prior_momentum must be in [0, 1), got {c.prior_momentum}.")
        if c.max_imbalance < 1:
            raise ConfigError(f"strategy.max_imbalance must be >= 1, got {c.max_imbalance}.")
        self.head = classifier_head(self.model)
        if not isinstance(self.head, nn.Linear):
            raise ConfigError(f"lsa adapts a linear classifier head, but the model's head is a "
                              f"{type(self.head).__name__}. Use a model whose last layer is nn.Linear.")
        self.model.eval()
        self.model.requires_grad_(False)
        if c.base in ("bn", "tent"):
            use_batch_statistics(self.model)
        if c.base == "tent":
            params = norm_affine_parameters(self.model)
            if not params:
                raise ConfigError("lsa with base=tent adapts BatchNorm affine parameters, but the model has none. "
                                  "Use a model with BatchNorm, or strategy.base=source.")
            for _, p in params:
                p.requires_grad_(True)
        k = self.num_classes
        self.adapter = LabelShiftAdapter(k, self.head.in_features, c.adapter_hidden).to(self.device)
        self.log_prior_src = torch.full((k,), -math.log(k), device=self.device)
        self.prior = torch.full((k,), 1.0 / k, device=self.device)

    def parameters_to_train(self):
        return [p for _, p in norm_affine_parameters(self.model)] if self.cfg.base == "tent" else []

    @torch.no_grad()
    def source_features(self, source):
        """(features [N, D], labels [N]) of the seeded source subset, source model in eval mode."""
        data = source_subset(source, self.cfg.source_samples, self.cfg.adapter_seed)
        was_training = self.model.training
        self.model.eval()      # (base bn/tent: BatchNorm without running statistics uses the source batch's)
        feats, ys = [], []
        for batch in data.batches(self.cfg.eval_batch_size, device=self.device):
            f, _ = features_and_logits(self.model, batch.x)
            feats.append(f.float())
            ys.append(batch.y)
        self.model.train(was_training)
        return torch.cat(feats), torch.cat(ys).long()

    def warm_up(self, source):
        """Source prior from the source labels; the adapter trained with the logit-adjusted loss."""
        c, k = self.cfg, self.num_classes
        counts = torch.bincount(source.y.long().cpu(), minlength=k).float()
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ConfigError(f"lsa needs source samples of every class to estimate the source label distribution; "
                              f"classes {missing[:10]} have none. Use a source set with all classes.")
        self.log_prior_src = (counts / counts.sum()).log().to(self.device)
        self.prior = (counts / counts.sum()).to(self.device)
        feats, ys = self.source_features(source)
        gen = torch.Generator().manual_seed(c.adapter_seed)
        with torch.random.fork_rng(devices=[]):          # seeded initialization, the run's RNG untouched
            torch.manual_seed(c.adapter_seed)
            self.adapter = LabelShiftAdapter(k, feats.shape[1], c.adapter_hidden).to(self.device)
        opt = torch.optim.Adam(self.adapter.parameters(), lr=c.adapter_lr)
        for _ in range(c.adapter_steps):
            idx = torch.randint(0, len(ys), (c.adapter_batch,), generator=gen)
            pri = sample_priors(len(idx), k, c.max_imbalance, c.dirichlet_fraction, c.dirichlet_concentration,
                                gen).to(self.device)
            log_pri = pri.log()
            with torch.enable_grad():
                s, a, off = self.adapter(log_pri - self.log_prior_src)
                z = adapted_logits(feats[idx.to(self.device)], self.head, s, a, off)
                loss = logit_adjusted_loss(z, ys[idx.to(self.device)], self.log_prior_src, log_pri, c.tau)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
        self.adapter.requires_grad_(False)
        self.adapter_loss = float(loss.detach()) if c.adapter_steps else None

    def logits_for(self, features, prior):
        """Adapted logits of ``features`` [B, D] for the label distribution ``prior`` [K]."""
        s, a, off = self.adapter((prior.clamp_min(1e-8).log() - self.log_prior_src)[None])
        return adapted_logits(features, self.head, s, a, off)

    def forward_and_adapt(self, x):
        """Adapted logits with the updated label distribution estimate; base=tent: one entropy step."""
        c = self.cfg
        with torch.enable_grad() if c.base == "tent" else torch.no_grad():
            with self.autocast():
                feats, _ = features_and_logits(self.model, x)
            feats = feats.float()
            with torch.no_grad():
                first = self.logits_for(feats.detach(), self.prior)
                self.prior = c.prior_momentum * self.prior + (1 - c.prior_momentum) * first.softmax(1).mean(0)
            z = self.logits_for(feats, self.prior)
            if c.base == "tent":
                self.optimize(softmax_entropy(z).mean(0))
        return z.detach()

    @torch.no_grad()
    def predict(self, x):
        self.model.eval()
        feats, _ = features_and_logits(self.model, x)
        return self.logits_for(feats.float(), self.prior)

    def extra_state(self):
        return {"prior": self.prior.clone(), "log_prior_src": self.log_prior_src.clone(),
                "adapter": {k: v.clone() for k, v in self.adapter.state_dict().items()}}

    def load_extra_state(self, state):
        self.prior = state["prior"].to(self.device)
        self.log_prior_src = state["log_prior_src"].to(self.device)
        self.adapter.load_state_dict(state["adapter"])

    def results(self):
        return {"label_distribution_estimate": [round(float(p), 4) for p in self.prior]}
