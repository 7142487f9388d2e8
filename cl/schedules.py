"""Learning-rate schedules, owned by the strategy base class: every strategy has them through
``strategy.schedule`` (a ``ScheduleConfig``) with no code of its own.

The base class builds a ``Schedule`` in ``setup()`` from the stream layout (steps per experience)
and, in ``optimize()``, sets each parameter group's lr before every optimizer step. The position
(optimizer steps taken) is part of the strategy's checkpoint, so ``--resume`` continues exactly.

``scope: run`` lays one schedule over all the run's steps; ``scope: experience`` restarts it at every
experience (re-warming and re-decaying), each experience with its own warm-up length and peak when
``warmup_steps`` / ``peak_lr`` are lists. Within a segment of N steps (0-based step s), with peak P
(``peak_lr``, default ``strategy.lr``), floor m = ``min_lr`` and W warm-up steps:

- warm-up (any shape, s < W): m + (P - m) (s + 1) / W, so step W - 1 runs at the peak;
- ``constant``: P (``constant`` with ``warmup_steps`` > 0 is the plain linear warm-up);
- ``cosine``: m + (P - m) (1 + cos(pi p)) / 2 and ``linear``: P - (P - m) p, p = (s - W) / (N - W);
- ``step``: P * gamma ** (number of ``milestones`` <= s), milestones counted from the segment start;
- ``wsd`` (warmup-stable-decay): P until the last D = round(decay_fraction N) steps, then linear
  from P towards m (p = (s - (N - D)) / D);
- ``infinite`` (Ibrahim et al., "Simple and Scalable Strategies to Continually Pre-train Large
  Language Models", TMLR 2024, Sec. 7; scope ``run`` only): warm up once, cosine cool-down from P
  to ``constant_lr`` over ``cooldown_steps``, keep ``constant_lr`` across experiences, and anneal
  only at the end of the run: exponentially, constant_lr * (m / constant_lr) ** p over the last
  D = round(decay_fraction N) steps.

Decays reach m just after the last step of their segment. Past the end of the known layout (a
strategy that trains more steps than the runner announced), the last step's lr is kept.
Re-warming for continual pre-training: Gupta et al., "Continual Pre-Training of Large Language
Models: How to (re)warm your model?", 2023 (scope=experience, cosine or linear).

Each parameter group keeps its ratio to ``strategy.lr``: a group built with lr 2 * strategy.lr
runs at 2x the schedule. A strategy that sets the learning rate itself (its own schedule) cannot be
combined with a non-constant ``strategy.schedule``: the first step that finds a group's lr changed
behind the schedule's back stops with a ConfigError.
"""
import math
from dataclasses import dataclass, field, fields
from typing import Any, List

from cl.errors import ConfigError

SHAPES = ("constant", "cosine", "linear", "step", "wsd", "infinite")
SCOPES = ("run", "experience")
_COMMON = ("name", "scope", "warmup_steps", "peak_lr", "min_lr")
USES = {"constant": _COMMON, "cosine": _COMMON, "linear": _COMMON, "step": _COMMON + ("milestones", "gamma"),
        "wsd": _COMMON + ("decay_fraction",),
        "infinite": _COMMON + ("decay_fraction", "constant_lr", "cooldown_steps")}


@dataclass
class ScheduleConfig:
    """``strategy.schedule``: the learning-rate schedule (cl/schedules.py has the formulas)."""
    name: str = "constant"          # constant | cosine | linear | step | wsd | infinite
    scope: str = "run"              # run: one schedule over the whole stream | experience: restart at each experience
    warmup_steps: Any = 0           # linear warm-up steps; scope=experience: an int or one int per experience
    peak_lr: Any = None             # None: strategy.lr; scope=experience: a float or one float per experience
    min_lr: float = 0.0             # where decays end and warm-ups start
    decay_fraction: float = 0.1     # wsd: final decay; infinite: final anneal, as a fraction of the segment
    milestones: List[int] = field(default_factory=list)   # step: steps (from the segment start) where lr *= gamma
    gamma: float = 0.1              # step: the factor at each milestone
    constant_lr: float = 0.0        # infinite: the lr kept after the cool-down (Ibrahim et al.'s eta_const)
    cooldown_steps: int = 0         # infinite: steps of the cosine cool-down from the peak to constant_lr


def is_active(cfg):
    """False for the default (constant lr, no warm-up, no per-experience peak): the lr is left alone."""
    return cfg.name != "constant" or _any_positive(cfg.warmup_steps) or cfg.peak_lr is not None


def _any_positive(value):
    return any(v > 0 for v in value) if isinstance(value, (list, tuple)) else value > 0


def _bad(key, msg):
    return ConfigError(f"Invalid value for 'strategy.schedule.{key}': {msg}")


class Schedule:
    """The lr of every optimizer step of a run, and its position.

    ``cfg``: a ScheduleConfig; ``lr``: strategy.lr (the default peak and the reference of each
    parameter group's ratio); ``steps_per_experience``: optimizer steps of each experience as the
    runner will run them (empty when unknown: then only shapes that need no length are allowed);
    ``boundaries_visible``: False for task-free runs (scope=experience is then an error).
    """

    def __init__(self, cfg, lr, steps_per_experience=(), boundaries_visible=True):
        self.cfg, self.base_lr = cfg, float(lr)
        self.steps = [int(n) for n in steps_per_experience]
        self.position = 0
        self._check(boundaries_visible)
        self.segments = self.steps if cfg.scope == "experience" else ([sum(self.steps)] if self.steps else [])

    def _check(self, boundaries_visible):
        c, n_exp = self.cfg, len(self.steps)
        if c.name not in SHAPES:
            raise _bad("name", f"'{c.name}' is not a schedule; choose one of {', '.join(SHAPES)}.")
        default = ScheduleConfig()
        unused = [f.name for f in fields(c) if f.name not in USES[c.name] and getattr(c, f.name) != getattr(default, f.name)]
        if unused:
            users = {k: [n for n, u in USES.items() if k in u] for k in unused}
            raise ConfigError(f"strategy.schedule.{unused[0]} does not apply to the '{c.name}' schedule (it is used by "
                              f"{', '.join(users[unused[0]])}); remove it or choose that schedule.")
        if c.scope not in SCOPES:
            raise _bad("scope", f"'{c.scope}' is not a scope; choose run (one schedule over the stream) or "
                                "experience (restart at every experience).")
        if self.base_lr <= 0:
            raise ConfigError("A learning-rate schedule needs strategy.lr > 0 (it is the default peak and each "
                              f"parameter group's reference), got {self.base_lr}.")
        for key in ("warmup_steps", "peak_lr"):
            value = getattr(c, key)
            if isinstance(value, (list, tuple)):
                if c.scope != "experience":
                    raise _bad(key, "a list (one value per experience) needs scope=experience; give one number "
                                    "for scope=run.")
                if n_exp and len(value) != n_exp:
                    raise _bad(key, f"the list has {len(value)} values but the stream has {n_exp} experiences.")
            if key == "warmup_steps" and (min(value) if isinstance(value, (list, tuple)) else value) < 0:
                raise _bad(key, f"must be >= 0, got {value}.")
            if key == "peak_lr" and value is not None and \
                    (min(value) if isinstance(value, (list, tuple)) else value) <= 0:
                raise _bad(key, f"must be > 0, got {value}.")
        if c.min_lr < 0:
            raise _bad("min_lr", f"must be >= 0, got {c.min_lr}.")
        if c.name in ("wsd", "infinite") and not 0 < c.decay_fraction < 1:
            raise _bad("decay_fraction", f"must be in (0, 1), got {c.decay_fraction}.")
        if c.name == "step" and c.gamma <= 0:
            raise _bad("gamma", f"must be > 0, got {c.gamma}.")
        if c.name == "infinite":
            if c.scope != "run":
                raise _bad("scope", "the infinite schedule warms up once and anneals only at the end of the run; "
                                    "use scope=run (or a cosine/wsd schedule for scope=experience).")
            if not 0 < c.min_lr < c.constant_lr:
                raise ConfigError("The infinite schedule needs 0 < strategy.schedule.min_lr < "
                                  f"strategy.schedule.constant_lr (its exponential anneal), got min_lr={c.min_lr}, "
                                  f"constant_lr={c.constant_lr}.")
            if c.cooldown_steps < 0:
                raise _bad("cooldown_steps", f"must be >= 0, got {c.cooldown_steps}.")
        if c.scope == "experience" and not boundaries_visible:
            raise _bad("scope", "scope=experience restarts the schedule at experience boundaries, but this run "
                                "hides them (task-free). Use scope=run.")
        needs_length = c.name in ("cosine", "linear", "wsd", "infinite") or c.scope == "experience"
        if needs_length and not self.steps:
            raise ConfigError(f"strategy.schedule name={c.name} scope={c.scope} needs the number of steps per "
                              "experience, which this strategy was not given. Run it through the runner "
                              "(cl run), or use a constant/step schedule.")

    # ------------------------------------------------------------------ the lr of a step
    def _per_experience(self, value, k, default):
        if value is None:
            return default
        return value[k] if isinstance(value, (list, tuple)) else value

    def locate(self, step):
        """(segment index, 0-based step within it, segment length) of global 0-based ``step``;
        past the end of the layout: the last step of the last segment."""
        if not self.segments:
            return 0, step, None
        for k, n in enumerate(self.segments):
            if step < n:
                return k, step, n
            step -= n
        return len(self.segments) - 1, max(self.segments[-1] - 1, 0), self.segments[-1]

    def lr_at(self, step):
        """The lr of the ``step``-th optimizer step of the run (0-based)."""
        c = self.cfg
        k, s, n = self.locate(step)
        peak = float(self._per_experience(c.peak_lr, k, self.base_lr))
        warm = int(self._per_experience(c.warmup_steps, k, 0))
        m = c.min_lr
        if s < warm:
            return m + (peak - m) * (s + 1) / warm
        if c.name == "constant":
            return peak
        if c.name == "step":
            return peak * c.gamma ** sum(1 for ms in c.milestones if ms <= s)
        if c.name in ("cosine", "linear"):
            p = (s - warm) / max(n - warm, 1)
            return m + (peak - m) * (0.5 * (1 + math.cos(math.pi * p)) if c.name == "cosine" else 1 - p)
        d = max(1, int(round(c.decay_fraction * n)))
        start = n - d
        if c.name == "wsd":
            return peak if s < start else peak - (peak - m) * (s - start) / d
        # infinite
        if s < warm + c.cooldown_steps:
            q = (s - warm) / c.cooldown_steps
            return c.constant_lr + (peak - c.constant_lr) * 0.5 * (1 + math.cos(math.pi * q))
        if s < start:
            return c.constant_lr
        return c.constant_lr * (m / c.constant_lr) ** ((s - start) / d)

    def lrs(self, steps=None):
        """The lr of steps 0..steps-1 (default: the whole layout)."""
        return [self.lr_at(s) for s in range(sum(self.steps) if steps is None else steps)]

    # ------------------------------------------------------------------ applying it
    def apply(self, optimizer):
        """Set every parameter group's lr for the next step (its ratio to strategy.lr kept); advance.
        Returns the schedule's lr for that step."""
        lr = self.lr_at(self.position)
        factor = lr / self.base_lr
        for g in optimizer.param_groups:
            if "schedule_base_lr" not in g:        # a group not seen before (e.g. a re-built optimizer)
                g["schedule_base_lr"] = g["lr"]
            elif g["lr"] != g.get("schedule_lr"):
                raise ConfigError(
                    f"The strategy changed a parameter group's lr ({g.get('schedule_lr')} -> {g['lr']}) between "
                    "optimizer steps: it has its own learning-rate schedule, which strategy.schedule would "
                    f"silently override. Use strategy.schedule.name=constant (no warm-up) with this strategy.")
            g["lr"] = g["schedule_lr"] = g["schedule_base_lr"] * factor
        self.position += 1
        return lr

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])
