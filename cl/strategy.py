"""The strategy base class and the runner<->strategy contract (docs/adding-a-strategy.md).

A strategy overrides only the hooks it needs, named after the timeline:

    train_eval protocol                       online protocol (test-time adaptation)
    -------------------                       --------------------------------------
    before_experience(exp)                    forward_and_adapt(x) -> logits
    train_data(exp) -> TensorData               (called by adapt(), which owns the
    loss(batch) -> Tensor                        reset-every-N-updates logic)
    after_step(batch)                         reset()  (episodic: restore the initial state)
    after_experience(exp)
    predict(x) -> logits                      predict(x) -> logits
    configure_model()   parameters_to_train()   warm_up(source)
    extra_state()/load_extra_state()   results()

What a strategy knows of the stream is ``self.stream``, a frozen ``StreamInfo`` the runner builds
before set-up: how many experiences, how many epochs and batches each will have (as the runner will
run them), whether boundary hooks will be called, the number of classes, the input shape and whether
labelled source data exists. It never sees the future experiences themselves. Labelled source data
(if any) is handed to ``warm_up(source)`` once, at set-up.
"""
import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Tuple

import torch

from cl.config import StrategyConfig
from cl.data import is_multihot
from cl.distributed import sync_gradients
from cl.multilabel import classification_loss
from cl.errors import ConfigError
from cl.tokens import token_cross_entropy
from cl.schedules import Schedule, is_active


@dataclass(frozen=True)
class StreamInfo:
    """What the runner tells a strategy about the stream, before training (read-only).

    ``batches_per_experience[i]`` is the number of batches in one pass over experience ``i``'s
    training data (train_eval) or over its unlabelled stream (online); ``epochs`` is the number of
    passes the runner makes over each experience; so experience ``i`` has
    ``steps_per_experience[i] = batches_per_experience[i] * epochs`` training steps. A field the
    caller could not know (a strategy built by hand in a unit test) is 0.
    """
    protocol: str = "train_eval"
    num_experiences: int = 0
    epochs: int = 1
    batch_size: int = 0
    batches_per_experience: Tuple[int, ...] = ()
    boundaries_visible: bool = True
    num_classes: int = 0
    input_shape: Tuple[int, ...] = ()
    has_source: bool = False
    reset_each_shift: bool = False

    @classmethod
    def of(cls, scenario, batch_size, epochs=1, hide_boundaries=False):
        """The StreamInfo of ``scenario`` for a strategy with this batch size and the epochs the runner
        will make (``cl.runner.stream_info`` resolves them from the run config)."""
        online = scenario.protocol == "online"
        data = [e.test if online else e.train for e in scenario.experiences]
        return cls(protocol=scenario.protocol, num_experiences=len(data), epochs=1 if online else int(epochs),
                   batch_size=batch_size, batches_per_experience=tuple(d.num_batches(batch_size) for d in data),
                   boundaries_visible=not (hide_boundaries or scenario.hide_boundaries),
                   num_classes=scenario.num_classes, input_shape=tuple(scenario.input_shape),
                   has_source=scenario.source is not None, reset_each_shift=bool(scenario.reset_each_shift))

    @property
    def steps_per_experience(self):
        return tuple(b * self.epochs for b in self.batches_per_experience)

    @property
    def total_steps(self):
        return sum(self.steps_per_experience)

    def experience_of_step(self, step):
        """(experience index, 1-based position within it) of the ``step``-th training step
        (1-based, counted over the whole run); (None, None) past the end or when unknown."""
        for i, n in enumerate(self.steps_per_experience):
            if step <= n:
                return i, step
            step -= n
        return None, None


def resolve_epochs(scenario_epochs, strategy_cfg, default_epochs):
    """The passes per experience the runner makes: the scenario's when it fixes them (online CL: 1),
    else ``strategy.epochs``. A ``strategy.epochs`` set to something other than its default that
    the scenario overrides is an error, not a silent change of the experiment."""
    if not scenario_epochs:
        return int(strategy_cfg.epochs)
    if strategy_cfg.epochs != scenario_epochs and strategy_cfg.epochs != default_epochs:
        raise ConfigError(
            f"strategy.epochs={strategy_cfg.epochs} conflicts with the scenario, which trains each "
            f"experience exactly {scenario_epochs} time(s) (e.g. online_class_split is one pass). Remove "
            "strategy.epochs from the config, or use a scenario that does not fix the epochs.")
    return int(scenario_epochs)


class Strategy:
    """Plain training: cross-entropy on the current batch (the ``finetune`` baseline)."""

    Config = StrategyConfig
    # The protocols the strategy implements: "train_eval" (train, then evaluate) and/or "online"
    # (predict-then-adapt, test-time adaptation). A run on another protocol stops before training.
    protocols = ("train_eval",)
    # Why the strategy needs the experience-boundary hooks (a sentence; None: it does not). A run
    # that hides the boundaries (hide_boundaries=true) stops before training with a message naming
    # the option. A strategy whose need depends on its config sets it on the instance in __init__.
    needs_boundaries = None
    # Why the strategy needs labelled source data in warm_up (None: it does not). A scenario with
    # no source data then stops before training.
    needs_source = None
    # The label types the strategy trains on: "single" (long labels, cross-entropy) and/or "multi"
    # (multi-hot targets, BCE; docs/multi-label.md). A multi-label scenario with a strategy that does
    # not list "multi" stops in cl.runner.build, before anything is written.
    label_types = ("single",)

    def __init__(self, model, cfg, *, stream=None, num_classes=None, device="cpu", amp=False):
        """``stream``: the StreamInfo the runner built (a unit test may give just ``num_classes``)."""
        if stream is None:
            stream = StreamInfo(num_classes=int(num_classes or 0))
        self.model = model
        self.cfg = cfg
        self.stream = stream
        self.num_classes = stream.num_classes
        self.device = torch.device(device)
        # amp: False | True / "fp16" (float16 autocast + gradient scaler, CUDA only) | "bf16" (bfloat16, any device)
        mode = ("fp16" if amp else None) if isinstance(amp, bool) else (amp or None)
        if mode not in (None, "fp16", "bf16"):
            raise ConfigError(f"amp must be false, true, 'fp16' or 'bf16', got {amp!r}.")
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode)
        self.use_amp = mode == "bf16" or (mode == "fp16" and self.device.type == "cuda")
        self.optimizer = None
        self.scaler = None
        self.updates = 0              # optimizer steps taken
        self.lr_schedule = None       # cl.schedules.Schedule when strategy.schedule is not the constant lr
        self._initial = None

    # ------------------------------------------------------------------ set-up
    def setup(self, source=None):
        """Called once by the runner (not overridden): move to the device, ``configure_model``,
        build the optimizer over ``parameters_to_train``, ``warm_up(source)``, then take the
        snapshot that ``reset`` returns to."""
        if self.needs_source and source is None:
            raise ConfigError(f"{type(self).__name__} needs labelled source data ({self.needs_source}), but the "
                              "scenario has none. Use a scenario with source data (e.g. corruption_stream with "
                              "source: true) or the strategy's source-free settings.")
        self.model.to(self.device)
        self.configure_model()
        params = self.parameters_to_train()
        self.optimizer = self.make_optimizer(params) if params else None
        if self.use_amp and self.amp_dtype == torch.float16:     # bf16 has float32's range: no scaler
            self.scaler = torch.amp.GradScaler("cuda")
        self.warm_up(source)
        self.lr_schedule = self.make_lr_schedule()      # after warm_up: its steps are not the stream's
        self._initial = copy.deepcopy(self._core_state())

    def make_lr_schedule(self):
        """The lr schedule of ``cfg.schedule`` over the stream's steps (None: constant lr, left alone)."""
        sched_cfg = getattr(self.cfg, "schedule", None)
        if sched_cfg is None or not is_active(sched_cfg):
            return None
        if self.optimizer is None:
            raise ConfigError(f"{type(self).__name__} has no optimizer, so strategy.schedule "
                              f"(name={sched_cfg.name}) cannot apply. Remove strategy.schedule from the config.")
        return Schedule(sched_cfg, self.cfg.lr, self.stream.steps_per_experience,
                        boundaries_visible=self.stream.boundaries_visible)

    def current_lr(self):
        """The lr of the first parameter group (the last step's, once a step was taken); None without optimizer."""
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else None

    def configure_model(self):
        """Set train/eval modes and requires_grad, build extra modules (default: everything trainable)."""

    def warm_up(self, source):
        """Once, after the optimizer exists and before the reset snapshot: source statistics,
        prototypes or a warm-up on labelled source data (``None`` when the scenario has none)."""

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self, params):
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                   nesterov=c.nesterov)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        raise ValueError(f"unknown optimizer {c.optimizer}")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.use_amp else nullcontext()

    # ------------------------------------------------------------------ train_eval
    def before_experience(self, exp):
        """A new experience starts (not called when boundaries are hidden)."""

    def train_data(self, exp):
        """The data to train on during ``exp`` (joint training returns the union of all seen)."""
        return exp.train

    def train_step(self, batch):
        """One optimisation step on a batch; returns the loss (detached) for logging."""
        if not self.model.training:   # modules are switched back after evaluation, not every step
            self.model.train()
        with self.autocast():
            loss = self.loss(batch)
        self.optimize(loss)
        self.after_step(batch)
        return loss.detach()

    def loss(self, batch):
        if is_multihot(batch.y):                                  # multi-label: BCE on every output
            return classification_loss(self.model(batch.x), batch.y)
        return token_cross_entropy(self.model(batch.x), batch.y)   # class logits [B, C] or token logits [B, T, V]

    def optimize(self, loss):
        """zero_grad, backward (scaled under AMP), the schedule's lr, step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_schedule is not None:
            self.lr_schedule.apply(self.optimizer)
        clip = self.cfg.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            sync_gradients(self.optimizer)          # torchrun: averaged over the ranks (cl/distributed.py)
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                self.clip_gradients(clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            sync_gradients(self.optimizer)
            if clip > 0:
                self.clip_gradients(clip)
            self.optimizer.step()
        self.updates += 1

    def clip_gradients(self, max_norm):
        """Scale the trained parameters' gradients to a global L2 norm of at most ``max_norm``."""
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def after_step(self, batch):
        """After each optimizer step of the train_eval protocol."""

    def after_experience(self, exp):
        """The current experience ended (not called when boundaries are hidden)."""

    @torch.no_grad()
    def predict(self, x):
        """Logits for evaluation (no adaptation)."""
        self.model.eval()
        with self.autocast():
            return self.model(x).float()

    @torch.no_grad()
    def predict_data(self, data, batch_size, device):
        """Yield ``(logits, y)`` over a whole TensorData in order (evaluation). Strategies with a
        frozen backbone override it to reuse cached features (see ``strategies._features.FeatureCache``)."""
        for batch in data.batches(batch_size, device=device):
            yield self.predict(batch.x), batch.y

    # ------------------------------------------------------------------ online
    def adapt(self, x):
        """Predict-then-adapt on an unlabelled batch; resets every ``cfg.reset_every`` updates."""
        if self.cfg.reset_every and self.updates and self.updates % self.cfg.reset_every == 0:
            self.reset()
        return self.forward_and_adapt(x)

    def forward_and_adapt(self, x):
        """Return logits for ``x`` and update the strategy (default: no adaptation)."""
        return self.predict(x)

    def reset(self):
        """Restore the state taken at set-up (model, optimizer, strategy extras)."""
        self._load_core_state(copy.deepcopy(self._initial))
        self.updates = 0

    # ------------------------------------------------------------------ state
    def extra_state(self):
        """Strategy-specific state to checkpoint (tensors, numbers, lists, dicts)."""
        return {}

    def load_extra_state(self, state):
        """Inverse of extra_state."""

    def results(self):
        """Strategy-specific numbers for results.json (e.g. buffer memory)."""
        return {}

    def _core_state(self):
        return {"model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
                "extra": self.extra_state()}

    def _load_core_state(self, state):
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None and state["optimizer"]:
            self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state["extra"])

    def state_dict(self):
        out = {**self._core_state(), "updates": self.updates}
        if self.lr_schedule is not None:
            out["schedule"] = self.lr_schedule.state_dict()
        return out

    def load_state_dict(self, state):
        self._load_core_state(state)
        self.updates = int(state["updates"])
        if self.lr_schedule is not None and "schedule" in state:
            self.lr_schedule.load_state_dict(state["schedule"])
