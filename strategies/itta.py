"""ITTA: Improved Test-Time Adaptation for domain generalization.

L. Chen, Y. Zhang, Y. Song, Y. Shan, L. Liu, "Improved Test-Time Adaptation for Domain
Generalization", CVPR 2023 (arXiv:2304.04494). Follows the authors' code, liangchen527/ITTA
(``domainbed/algorithms.py: class ITTA``, ``domainbed/networks.py: ResNet_ITTA, MappingNetwork,
Adaparams``, ``domainbed/lib/misc.py: l2_between_dicts, accuracy_tsc``).

Training on the source domains (``warm_up``; the scenario's labelled source, e.g. the training
domains of ``leave_one_domain_out``). Each step draws ``train_batch_size`` samples from every
source domain (the source's group ids ``g``; one minibatch per domain as DomainBed) and
  1. forwards them once with MixStyle (Zhou et al. 2021; Beta(0.1, 0.1), per-sample channel
     statistics over the spatial positions, eps 1e-6, a random permutation of the batch) applied
     to a copy of the batch after stage 1 or, with probability 1/2, after stage 2 (``layer1`` /
     ``layer2`` of the network), giving features z_ori and z_aug (the classifier head's input);
     loss = MSE(A(z_aug - z_ori), 0) + CE(h(z_ori), y) + CE(h(z_aug), y), one Adam step on all
     weights (lr, weight decay). A is the learnable consistency loss ``Adaparams``: 10 layers of
     per-feature scale and shift (ones / zeros) with ReLU between them;
  2. forwards again and trains A alone by gradient alignment: g_reg, g_cla = the gradients of the
     two losses w.r.t. the feature extractor's weights (all but the head), the first with its
     graph (double backprop); each flattened vector standardized by its own mean and std
     (constants); penalty = 0.1 * mean((g_reg - g_cla)^2) (g_cla constant); one Adam step on A
     (lr * 0.1).
``objective=erm`` trains plain cross-entropy instead (DomainBed's ERM), for the baseline.

Test time (``forward_and_adapt``): after every stage ``layerK`` a ``MappingNetwork`` block (5
layers of per-position scale and shift of shape [C, H, W], ones / zeros, ReLU between) is inserted;
only these are trained: per batch, ``test_steps`` Adam steps (lr * 0.1) on ada_lr *
MSE(A(z_aug - z_ori), 0) with MixStyle as in training and the model and A frozen; then the
prediction is made without MixStyle (``accuracy_tsc``: adapt, then predict). The blocks are not
reset between batches or domains (the authors' evaluation keeps them over the whole test set).

BatchNorm layers stay in eval mode throughout (the authors' ``freeze_bn``), so the doubled batch
[x; MixStyle(x)] through one forward equals their two forwards.

Defaults: ``hparams_registry.py`` for the DomainBed image datasets (PACS, VLCS, OfficeHome): lr
5e-5, weight decay 0, batch 32 per domain, ada_lr 1e-6 (DomainNet: 0.1), 5,001 steps
(``datasets.py`` N_STEPS); small images (RotatedMNIST): lr 1e-3, batch 64. Test batch 1
(``train.py``: evaluation loaders of batch size 1) -- with a batch of one, MixStyle mixes an image
with itself and the test loss is ~0, so runs that want the mapping to move use larger batches.
The authors' mapping shapes are ResNet-18's at 224 px; here they are read from the model on a
dummy input of ``input_shape``, for any network with stages ``layer1``, ``layer2``, ...
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.models._build import unwrap
from cl.models.features import classifier_head, features_and_logits
from cl.registry import STRATEGIES
from cl.strategy import Strategy

OBJECTIVES = ("itta", "erm")


@dataclass
class ITTAConfig(StrategyConfig):
    name: str = "itta"
    optimizer: str = "adam"          # algorithms.py ITTA: Adam everywhere
    lr: float = 5e-5                 # hparams_registry.py lr (PACS/VLCS/OfficeHome; RotatedMNIST 1e-3)
    weight_decay: float = 0.0        # hparams_registry.py weight_decay
    batch_size: int = 1              # train.py: evaluation loaders of batch size 1 (the test stream)
    eval_batch_size: int = 64
    objective: str = "itta"          # itta | erm (the DomainBed ERM baseline: cross-entropy only)
    train_steps: int = 5001          # datasets.py N_STEPS
    train_batch_size: int = 32       # hparams_registry.py batch_size, per source domain (RotatedMNIST 64)
    test_steps: int = 1              # misc.py accuracy_tsc: one test_adapt per batch
    test_lr_factor: float = 0.1      # test_optimizer: Adam(lr * 0.1)
    adaparams_lr_factor: float = 0.1  # adaparams_optimizer: Adam(lr * 0.1)
    ada_lr: float = 1e-6             # hparams_registry.py ada_lr (DomainNet 0.1): weight of the test loss
    penalty_weight: float = 0.1      # algorithms.py: l2_between_dicts(...) * 0.1
    mix_alpha: float = 0.1           # networks.py mixstyle: Beta(0.1, 0.1)
    mix_eps: float = 1e-6
    mapping_depth: int = 5           # networks.py MappingNetwork(depth=5)
    adaparams_depth: int = 10        # networks.py Adaparams(depth=10)
    train_seed: int = 0              # order of the source batches


class ElementwiseStack(nn.Module):
    """``depth`` layers x -> relu(w_i * x + b_i) (no ReLU after the last), w ones, b zeros, of ``shape``."""

    def __init__(self, shape, depth):
        super().__init__()
        self.weight = nn.ParameterList([nn.Parameter(torch.ones(shape)) for _ in range(depth)])
        self.bias = nn.ParameterList([nn.Parameter(torch.zeros(shape)) for _ in range(depth)])

    def forward(self, x):
        n = len(self.weight)
        for i in range(n):
            x = self.weight[i] * x + self.bias[i]
            if i < n - 1:
                x = F.relu(x)
        return x


def mixstyle(x, alpha, eps):
    """MixStyle of [B, C, ...] features: normalize with each sample's spatial mean/std and re-style with a
    Beta(alpha, alpha) mix of its own and a random other sample's statistics (statistics constant)."""
    dims = list(range(2, x.dim()))
    b = x.size(0)
    mu = x.mean(dim=dims, keepdim=True)
    sig = (x.var(dim=dims, keepdim=True) + eps).sqrt()
    mu, sig = mu.detach(), sig.detach()
    lmda = torch.distributions.Beta(alpha, alpha).sample((b,) + (1,) * (x.dim() - 1)).to(x.device)
    perm = torch.randperm(b)
    mu_mix = mu * lmda + mu[perm] * (1 - lmda)
    sig_mix = sig * lmda + sig[perm] * (1 - lmda)
    return (x - mu) / sig * sig_mix + mu_mix


def standardized_gap(g_reg, g_cla):
    """mean((s(g_reg) - s(g_cla))^2), s(v) = (v - mean) / std with the statistics as constants, g_cla constant."""
    a = torch.cat([g.reshape(-1) for g in g_reg])
    b = torch.cat([g.reshape(-1) for g in g_cla]).detach()
    a = (a - a.mean().item()) / a.std().item()
    b = (b - b.mean().item()) / b.std().item()
    return (a - b).pow(2).mean()


def stages(model):
    """[(name, module)] after whose outputs ITTA acts: the network's ``layer1``, ``layer2``, ...
    children (ResNets), else, in an ``nn.Sequential`` (``small_cnn``), each ReLU that follows a
    BatchNorm2d (the end of every conv-BN-ReLU block)."""
    net = unwrap(model)
    found = []
    k = 1
    while isinstance(getattr(net, f"layer{k}", None), nn.Module):
        found.append((f"layer{k}", getattr(net, f"layer{k}")))
        k += 1
    if not found and isinstance(net, nn.Sequential):
        kids = list(net.named_children())
        found = [(n, m) for (_, prev), (n, m) in zip(kids, kids[1:])
                 if isinstance(prev, nn.BatchNorm2d) and isinstance(m, nn.ReLU)]
    return found


@STRATEGIES.register("itta")
class ITTA(Strategy):
    """Learnable consistency loss trained by gradient alignment on source domains; test-time affine blocks."""

    protocols = ("online",)
    needs_source = "ITTA trains the network and its consistency loss on the labelled source domains"
    Config = ITTAConfig

    def configure_model(self):
        c = self.cfg
        if c.objective not in OBJECTIVES:
            raise ConfigError(f"strategy.objective must be one of {', '.join(OBJECTIVES)}, got '{c.objective}'.")
        self.stages = stages(self.model)
        if len(self.stages) < 2:
            raise ConfigError("itta inserts MixStyle after stage 1 or 2 and test-time blocks after every stage, so the "
                              "network needs children named layer1, layer2, ... (ResNets: resnet18_cifar, "
                              "cifar_resnet20, resnet50) or, as an nn.Sequential, two or more conv-BN-ReLU blocks "
                              "(small_cnn with depth >= 2). Use such a model.")
        if not self.stream.input_shape:
            raise ConfigError("itta sizes its test-time blocks from the input shape; build the strategy with "
                              "stream=StreamInfo.of(scenario, ...).")
        classifier_head(self.model)
        self.model.eval()                           # BatchNorm frozen (networks.py freeze_bn)
        self.model.requires_grad_(False)
        self._mix_stage, self._mapping_on = None, False
        shapes = {}
        hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: shapes.__setitem__(k, out.shape[1:]))
                 for k, (_, m) in enumerate(self.stages)]
        with torch.no_grad():
            feats, _ = features_and_logits(self.model, torch.zeros(2, *self.stream.input_shape, device=self.device))
        for h in hooks:
            h.remove()
        self.mapping = nn.ModuleList([ElementwiseStack(tuple(shapes[k]), c.mapping_depth)
                                      for k in range(len(self.stages))]).to(self.device)
        self.adaparams = ElementwiseStack((feats.shape[1],), c.adaparams_depth).to(self.device)
        self.adaparams.requires_grad_(False)
        for k, (_, m) in enumerate(self.stages):
            m.register_forward_hook(lambda mod, inp, out, k=k: self._stage_hook(k, out))

    def _stage_hook(self, k, out):
        if self._mix_stage == k:                   # [x; MixStyle(x)]: the rest of the net sees both
            out = torch.cat([out, mixstyle(out, self.cfg.mix_alpha, self.cfg.mix_eps)])
        if self._mapping_on:
            out = self.mapping[k](out)
        return out

    def parameters_to_train(self):
        return list(self.mapping.parameters())      # the test-time blocks (model and A frozen)

    def make_optimizer(self, params):
        return torch.optim.Adam(params, lr=self.cfg.lr * self.cfg.test_lr_factor, betas=tuple(self.cfg.betas))

    def two_views(self, x):
        """(z_ori, z_aug, logits_ori, logits_aug) with MixStyle after stage 1 or 2 (probability 1/2 each)."""
        self._mix_stage = 0 if torch.rand(()) < 0.5 else 1
        try:
            z, logits = features_and_logits(self.model, x)
        finally:
            self._mix_stage = None
        b = x.shape[0]
        return z[:b], z[b:], logits[:b], logits[b:]

    def consistency(self, z_ori, z_aug):
        out = self.adaparams(z_aug - z_ori)
        return F.mse_loss(out, torch.zeros_like(out))

    # ------------------------------------------------------------------ training on the source domains
    def source_batches(self, source):
        """Endless [(x, y)] per step: ``train_batch_size`` samples of every source domain (group id ``g``),
        each domain read in seeded random passes."""
        c = self.cfg
        groups = source.g.long() if source.g is not None else torch.zeros(len(source), dtype=torch.long)
        domains = [torch.nonzero(groups == d).flatten() for d in groups.unique().tolist()]
        gen = torch.Generator().manual_seed(c.train_seed)
        orders = [idx[torch.randperm(len(idx), generator=gen)] for idx in domains]
        pos = [0] * len(domains)
        while True:
            picks = []
            for d, idx in enumerate(domains):
                if pos[d] + c.train_batch_size > len(idx):
                    orders[d], pos[d] = idx[torch.randperm(len(idx), generator=gen)], 0
                picks.append(orders[d][pos[d]:pos[d] + c.train_batch_size])
                pos[d] += c.train_batch_size
            batch = next(source.subset(torch.cat(picks)).batches(len(source), device=self.device))
            yield batch.x, batch.y

    def warm_up(self, source):
        c = self.cfg
        head = classifier_head(self.model)
        head_ids = {id(p) for p in head.parameters()}
        weights = list(self.model.parameters())
        feat_params = [p for p in weights if id(p) not in head_ids]
        self.model.requires_grad_(True)
        opt = torch.optim.Adam(weights, lr=c.lr, weight_decay=c.weight_decay)
        ada_opt = torch.optim.Adam(self.adaparams.parameters(), lr=c.lr * c.adaparams_lr_factor)
        self.train_log = []
        batches = self.source_batches(source)
        with torch.enable_grad():
            for step in range(c.train_steps):
                x, y = next(batches)
                if c.objective == "erm":
                    loss = F.cross_entropy(self.model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    continue
                self.adaparams.requires_grad_(True)
                z_ori, z_aug, l_ori, l_aug = self.two_views(x)
                reg = self.consistency(z_ori, z_aug)
                cla = F.cross_entropy(l_ori, y) + F.cross_entropy(l_aug, y)
                opt.zero_grad(set_to_none=True)
                (reg + cla).backward(inputs=weights)
                opt.step()
                z_ori, z_aug, l_ori, l_aug = self.two_views(x)        # gradient alignment: A alone
                reg = self.consistency(z_ori, z_aug)
                cla = F.cross_entropy(l_ori, y) + F.cross_entropy(l_aug, y)
                g_reg = torch.autograd.grad(reg, feat_params, create_graph=True, allow_unused=True)
                g_cla = torch.autograd.grad(cla, feat_params, allow_unused=True)
                used = [i for i, (a, b) in enumerate(zip(g_reg, g_cla)) if a is not None and b is not None]
                penalty = standardized_gap([g_reg[i] for i in used], [g_cla[i] for i in used]) * c.penalty_weight
                ada_opt.zero_grad(set_to_none=True)
                penalty.backward(inputs=list(self.adaparams.parameters()))
                ada_opt.step()
                if step % max(1, c.train_steps // 10) == 0 or step == c.train_steps - 1:
                    self.train_log.append({"step": step, "cla": float(cla.detach()), "reg": float(reg.detach()),
                                           "penalty": float(penalty.detach())})
        self.model.requires_grad_(False)
        self.adaparams.requires_grad_(False)
        for p in weights:
            p.grad = None
        self.model.eval()
        self._mapping_on = True

    # ------------------------------------------------------------------ test time
    def forward_and_adapt(self, x):
        """``test_steps`` updates of the test-time blocks on the batch's consistency loss, then logits."""
        self.model.eval()
        with torch.enable_grad():
            for _ in range(self.cfg.test_steps if self.cfg.objective == "itta" else 0):
                z_ori, z_aug, _, _ = self.two_views(x)
                self.optimize(self.consistency(z_ori, z_aug) * self.cfg.ada_lr)
        return self.predict(x)

    @torch.no_grad()
    def predict(self, x):
        self.model.eval()
        return self.model(x).float()

    def extra_state(self):
        return {"adaparams": {k: v.clone() for k, v in self.adaparams.state_dict().items()},
                "mapping": {k: v.clone() for k, v in self.mapping.state_dict().items()}}

    def load_extra_state(self, state):
        self.adaparams.load_state_dict(state["adaparams"])
        self.mapping.load_state_dict(state["mapping"])

    def results(self):
        return {"itta_train_log": self.train_log} if getattr(self, "train_log", None) else {}
