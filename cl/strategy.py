"""The strategy base class: owns the optimizer, AMP, the train step, reset and state.

A strategy overrides only the hooks it needs, named after the timeline:

    train_eval protocol                       online protocol (test-time adaptation)
    -------------------                       --------------------------------------
    before_experience(exp)                    forward_and_adapt(x) -> logits
    train_data(exp) -> TensorData               (called by adapt(), which owns the
    loss(batch) -> Tensor                        reset-every-N-updates logic)
    after_step(batch)                         reset()  (episodic: restore the initial state)
    after_experience(exp)
    predict(x) -> logits                      predict(x) -> logits
    configure_model()   parameters_to_train()   extra_state()/load_extra_state()   results()
"""
import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.schedules import Schedule, is_active


class Strategy:
    """Plain training: cross-entropy on the current batch (the ``finetune`` baseline)."""

    Config = StrategyConfig
    # Why the strategy needs the experience-boundary hooks (None: it does not). With
    # hide_boundaries=true the runner warns once that they will not be called.
    needs_boundaries = None

    def __init__(self, model, cfg, *, num_classes, device="cpu", scenario=None, amp=False):
        self.model = model
        self.cfg = cfg
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.scenario = scenario
        self.use_amp = bool(amp) and self.device.type == "cuda"
        self.optimizer = None
        self.scaler = None
        self.updates = 0              # optimizer steps taken
        self.lr_schedule = None       # cl.schedules.Schedule when strategy.schedule is not the constant lr
        self._initial = None

    # ------------------------------------------------------------------ set-up
    def setup(self):
        """Called once by the runner: move to device, configure, build the optimizer, snapshot."""
        self.model.to(self.device)
        self.configure_model()
        params = self.parameters_to_train()
        self.optimizer = self.make_optimizer(params) if params else None
        if self.use_amp:
            self.scaler = torch.amp.GradScaler("cuda")
        self.lr_schedule = self.make_lr_schedule()
        self._initial = copy.deepcopy(self._core_state())

    def make_lr_schedule(self):
        """The lr schedule of ``cfg.schedule`` over the stream's steps (None: constant lr, left alone)."""
        sched_cfg = getattr(self.cfg, "schedule", None)
        if sched_cfg is None or not is_active(sched_cfg):
            return None
        if self.optimizer is None:
            raise ConfigError(f"{type(self).__name__} has no optimizer, so strategy.schedule "
                              f"(name={sched_cfg.name}) cannot apply. Remove strategy.schedule from the config.")
        steps, visible = self._stream_layout()
        return Schedule(sched_cfg, self.cfg.lr, steps, boundaries_visible=visible)

    def _stream_layout(self):
        """(optimizer steps per experience, boundaries visible) as the runner will run them.
        The one place that reads the scenario for it (to become ``self.stream`` in the runner contract)."""
        sc = self.scenario
        if sc is None:
            return (), True
        bs = self.cfg.batch_size
        if sc.protocol == "online":
            return tuple(e.test.num_batches(bs) for e in sc.experiences), not sc.hide_boundaries
        epochs = sc.epochs or self.cfg.epochs
        return tuple(e.train.num_batches(bs) * epochs for e in sc.experiences), not sc.hide_boundaries

    def current_lr(self):
        """The lr of the first parameter group (the last step's, once a step was taken); None without optimizer."""
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else None

    def configure_model(self):
        """Set train/eval modes and requires_grad (default: everything trainable)."""

    def parameters_to_train(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self, params):
        c = self.cfg
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
        raise ValueError(f"unknown optimizer {c.optimizer}")

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()

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
        return F.cross_entropy(self.model(batch.x), batch.y)

    def optimize(self, loss):
        """zero_grad, backward (scaled under AMP), the schedule's lr, step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_schedule is not None:
            self.lr_schedule.apply(self.optimizer)
        clip = self.cfg.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                self.clip_gradients(clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
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
