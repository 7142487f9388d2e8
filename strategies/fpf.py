"""FPF: Forgetting Prioritized Finetuning, applied on top of any continual-learning method.

Paper: Zhao, Zhou, Long, Jiang, Zhang, "Does Continual Learning Equally Forget All Parameters?",
ICML 2023, arXiv 2304.04158 (ICLR 2023 submission gPWtHmCaBiY).

From the abstract and Fig. 2 caption: only a few modules are task-specific and change sensitively
between tasks; FPF "finetunes the most sensitive parameters for a few iterations using buffered
data at the end of arbitrary CL methods". ``fpf`` wraps a base strategy named by ``base``
(``finetune``, ``er``, ``derpp``, ...), delegates every hook to it, and finetunes only the modules
listed in ``fpf_modules`` on the replay buffer: the base's own buffer when it has one (er, derpp),
else a reservoir buffer of ``buffer_size`` that this wrapper fills from the stream.

Which modules: the paper finds, for ResNet-18 in class-incremental learning, the BN layers and the
final FC layer to be the forgetting-prone ones (our reading; we could not reach the full text to
re-check it, see experiments/reproduce/kfpf_*.yaml). ``fpf_modules`` entries are
  * ``bn``   -- every BatchNorm layer (affine parameters and running statistics),
  * ``norm`` -- every BatchNorm/GroupNorm/LayerNorm layer,
  * ``head`` -- the classifier head (``cl.models.features.classifier_head``),
  * any module name of the network, e.g. ``conv1`` or ``layer4.1`` (the module and its children).
During FPF only these modules are in train mode and have gradients; every other parameter and
buffer stays bit-identical (BatchNorm layers not named keep their running statistics).

``fpf_when``: ``end`` runs FPF once after the last training step (the paper's "at the end of any
CL method"); ``experience`` runs it after the last step of every experience. Both are detected
from the step count, so they also work with ``hide_boundaries=true``. FPF's steps, learning rate
and batch size are not in the text we could reach: the defaults below are our choice.
"""
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from cl.buffer import buffer_from_config
from cl.config import StrategyConfig
from cl.data import Batch
from cl.errors import ConfigError, did_you_mean
from cl.models.features import classifier_head
from cl.models import unwrap
from cl.registry import STRATEGIES
from cl.strategy import Strategy

NORM_KINDS = {"bn": (nn.modules.batchnorm._BatchNorm,),
              "norm": (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)}


def select_modules(model, specs):
    """The modules named by ``specs`` (see the module docstring), without duplicates."""
    net = unwrap(model)
    named = dict(net.named_modules())
    out = []
    for spec in specs:
        if spec in NORM_KINDS:
            found = [m for m in net.modules() if isinstance(m, NORM_KINDS[spec])]
        elif spec == "head":
            found = [classifier_head(model)]
        elif spec in named and spec:
            found = [named[spec]]
        else:
            names = [n for n in named if n]
            raise ConfigError(f"fpf_modules entry '{spec}' is neither bn, norm, head nor a module of "
                              f"{type(net).__name__}{did_you_mean(spec, names)}. Module names: "
                              f"{', '.join(names[:30])}{' ...' if len(names) > 30 else ''}.")
        if not found:
            kind = {"bn": "BatchNorm", "norm": "normalization"}.get(spec, spec)
            raise ConfigError(
                f"fpf_modules entry '{spec}' matches no module of {type(net).__name__}: this model has no {kind} "
                "layers. Use a model that has them (e.g. model.name=small_cnn or resnet18_cifar_reduced; "
                "model.name=mlp with model.args.batch_norm=true), or name the modules to finetune, e.g. "
                "strategy.fpf_modules=[head].")
        out += [m for m in found if all(m is not o for o in out)]
    return out


def module_parameters(modules):
    """Unique parameters of ``modules`` (and their children)."""
    params, ids = [], set()
    for m in modules:
        for p in m.parameters():
            if id(p) not in ids:
                ids.add(id(p))
                params.append(p)
    return params


def fpf_finetune(model, modules, buffer, *, steps, lr, batch_size, augment=None, kd_alpha=0.0, momentum=0.0):
    """Finetune only ``modules`` for ``steps`` SGD steps on buffer batches; returns the mean loss.

    Loss: cross-entropy on the replayed labels, plus ``kd_alpha * MSE(logits, stored logits)``
    when ``kd_alpha > 0`` and the buffer keeps logits (k-FPF-KD). Everything outside ``modules``
    is left in eval mode without gradients, so it does not change at all.
    """
    if len(buffer) == 0 or steps <= 0:
        return float("nan")
    params = module_parameters(modules)
    modes = {m: m.training for m in model.modules()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.eval()
    for m in modules:
        m.train()
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum) if params else None
    total = 0.0
    try:
        for _ in range(steps):
            x, y, z, _ = buffer.sample(batch_size)
            x = augment(x) if augment is not None else x
            out = model(x)
            loss = F.cross_entropy(out, y)
            if kd_alpha and z is not None:
                loss = loss + kd_alpha * F.mse_loss(out.float(), z)
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            total += float(loss.detach())
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
        for m, was in modes.items():
            m.train(was)
    return total / steps


@dataclass
class FPFConfig(StrategyConfig):
    name: str = "fpf"
    base: str = "derpp"             # the CL method FPF is applied to (finetune, er, derpp, ...)
    base_args: Dict[str, Any] = field(default_factory=dict)  # the base's own fields, e.g. {alpha: 0.1, buffer_size: 200}
    lr: float = 0.03                # the BASE's learning rate (Mammoth DER++ seq-cifar10); optimizer/batch/epochs fields also go to the base
    fpf_modules: List[str] = field(default_factory=lambda: ["bn", "head"])  # paper: BN + FC for ResNet class-IL (our reading)
    fpf_when: str = "end"           # end (paper: "at the end of any CL method") | experience
    fpf_steps: int = 300            # not in the text we could reach: our choice ("a few iterations")
    fpf_lr: float = 0.03            # not in the text we could reach: our choice (= the DER++ lr)
    fpf_batch_size: int = 32        # not in the text we could reach: Mammoth's replay batch size
    kd_alpha: float = 0.0           # FPF loss += kd_alpha * logit MSE when the buffer keeps logits (derpp)
    buffer_size: int = 500          # own reservoir buffer, used only when the base keeps none (finetune)
    buffer_policy: str = "reservoir"
    store_uint8: bool = True


def base_config(base_cls, cfg):
    """The base strategy's config: its defaults <- our StrategyConfig fields <- ``cfg.base_args``."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(StrategyConfig) if f.name != "name"}
    schema = OmegaConf.structured(base_cls.Config)
    valid = [str(k) for k in schema.keys()]
    unknown = [k for k in cfg.base_args if k not in valid]
    if unknown:
        raise ConfigError(f"strategy.base_args has keys {unknown} that strategy '{cfg.base}' does not have"
                          f"{did_you_mean(unknown[0], valid)}. Valid keys: {', '.join(valid)}.")
    try:
        merged = OmegaConf.merge(schema, {**shared, **dict(cfg.base_args), "name": cfg.base})
        return OmegaConf.to_object(merged)
    except Exception as e:
        raise ConfigError(f"Invalid strategy.base_args for '{cfg.base}': {e}") from None


@STRATEGIES.register("fpf")
class FPF(Strategy):
    """Forgetting Prioritized Finetuning of BN/FC-type modules on the buffer after any base method."""

    Config = FPFConfig

    def __init__(self, model, cfg, *, stream=None, num_classes=None, device="cpu", amp=False):
        super().__init__(model, cfg, stream=stream, num_classes=num_classes, device=device, amp=amp)
        if cfg.fpf_when not in ("end", "experience"):
            raise ConfigError(f"strategy.fpf_when must be 'end' or 'experience', got '{cfg.fpf_when}'.")
        base_cls = STRATEGIES.get(cfg.base)
        if issubclass(base_cls, FPF) or cfg.base in ("fpf", "kfpf", "joint"):
            raise ConfigError(f"strategy.base='{cfg.base}' cannot be wrapped by FPF (it wraps a continual-learning "
                              "method); use finetune, er or derpp.")
        self.inner = base_cls(model, base_config(base_cls, cfg), stream=self.stream, device=device, amp=amp)
        self.needs_boundaries = self.inner.needs_boundaries
        self.needs_source = self.inner.needs_source
        self.modules = select_modules(model, cfg.fpf_modules)
        inner_buffer = getattr(self.inner, "buffer", None)
        self.own_buffer = inner_buffer is None
        self.buffer = buffer_from_config(cfg, self.device) if self.own_buffer else inner_buffer
        self.transform = None
        self.steps = 0                # training steps taken
        self.fpf_at = None            # the step after which FPF runs next (None: not scheduled)
        self.fpf_runs = 0
        self.experiences_started = 0  # train_data calls (one per experience, boundaries visible or not)

    # ------------------------------------------------------------------ set-up: the base's, shared
    def configure_model(self):
        self.inner.configure_model()

    def parameters_to_train(self):
        return self.inner.parameters_to_train()

    def make_optimizer(self, params):
        self.inner.optimizer = self.inner.make_optimizer(params)
        return self.inner.optimizer

    def warm_up(self, source):
        self.inner.scaler = self.scaler
        self.inner.warm_up(source)

    def make_lr_schedule(self):
        self.inner.lr_schedule = super().make_lr_schedule()   # the base steps the optimizer: one shared schedule
        return self.inner.lr_schedule

    def augment(self, x):
        return self.transform(x, None) if self.transform is not None else x

    # ------------------------------------------------------------------ delegated hooks
    def before_experience(self, exp):
        self.inner.before_experience(exp)

    def train_data(self, exp):
        """The base's data; FPF is scheduled after its last step (every experience or the last one)."""
        self.transform = exp.train.transform
        data = self.inner.train_data(exp)
        if self.own_buffer:           # raw inputs for our buffer; we augment for the base
            data = data.with_transform(None)
        n_steps = data.num_batches(self.cfg.batch_size) * self.stream.epochs   # the runner's epochs
        self.experiences_started += 1
        last = self.experiences_started >= self.stream.num_experiences       # unknown stream (0): every one
        if self.cfg.fpf_when == "experience" or last:
            self.fpf_at = self.steps + n_steps
        return data

    def train_step(self, batch):
        loss = self.inner.train_step(Batch(self.augment(batch.x), batch.y, batch.g) if self.own_buffer else batch)
        if self.own_buffer:
            self.buffer.add(batch.x, batch.y)
        self.steps += 1
        self.updates = self.inner.updates
        if self.steps == self.fpf_at:
            self.run_fpf()
            self.fpf_at = None
        return loss

    def after_experience(self, exp):
        self.inner.after_experience(exp)

    def predict(self, x):
        return self.inner.predict(x)

    def run_fpf(self):
        c = self.cfg
        fpf_finetune(self.model, self.modules, self.buffer, steps=c.fpf_steps, lr=c.fpf_lr,
                     batch_size=c.fpf_batch_size, augment=self.augment, kd_alpha=c.kd_alpha)
        self.fpf_runs += 1

    # ------------------------------------------------------------------ state
    def extra_state(self):
        state = {"inner": self.inner.extra_state(), "steps": self.steps, "fpf_runs": self.fpf_runs,
                 "experiences_started": self.experiences_started}
        if self.own_buffer:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_extra_state(self, state):
        self.inner.load_extra_state(state.get("inner", {}))
        self.steps, self.fpf_runs = int(state.get("steps", 0)), int(state.get("fpf_runs", 0))
        self.experiences_started = int(state.get("experiences_started", 0))
        if self.own_buffer and "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])

    def results(self):
        out = dict(self.inner.results())
        if self.own_buffer:
            out.update(self.buffer.results())
        out.update({"fpf_runs": self.fpf_runs, "fpf_parameters": sum(p.numel() for p in module_parameters(self.modules))})
        return out
