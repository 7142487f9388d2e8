"""Learning-rate schedules (cl.schedules): hand-checked shapes, the base class applies them for
every strategy, and --resume continues them exactly."""
import math

import pytest
import torch

from cl.cli import main
from cl.config import load_config
from cl.errors import ConfigError
from cl.runner import run
from cl.schedules import Schedule, ScheduleConfig
from cl.strategy import Strategy
from conftest import quick_overrides


def lrs(layout, lr=1.0, **cfg):
    return Schedule(ScheduleConfig(**cfg), lr, layout).lrs()


def test_constant_with_warmup_is_a_linear_warmup():
    assert lrs([8], warmup_steps=4) == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 1])
    assert lrs([4], warmup_steps=2, min_lr=0.2) == pytest.approx([0.6, 1, 1, 1])   # from min_lr up


def test_cosine_and_linear_decay():
    cos = lrs([10], name="cosine")
    assert cos[0] == 1 and cos[5] == pytest.approx(0.5) and cos[9] == pytest.approx((1 + math.cos(0.9 * math.pi)) / 2)
    assert lrs([10], name="cosine", warmup_steps=2)[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs([10], name="cosine", warmup_steps=2)[6] == pytest.approx(0.5)        # p = (6 - 2) / 8
    lin = lrs([10], name="linear", min_lr=0.1)
    assert lin[0] == 1 and lin[5] == pytest.approx(0.55) and lin[9] == pytest.approx(1 - 0.9 * 0.9)


def test_step_schedule():
    assert lrs([8], name="step", milestones=[3, 6], gamma=0.5) == pytest.approx([1, 1, 1, .5, .5, .5, .25, .25])


def test_warmup_stable_decay():
    # 10 steps, decay over the last round(0.2 * 10) = 2: 1 ... 1, then 1 - p with p = 0, 0.5
    assert lrs([10], name="wsd", decay_fraction=0.2, warmup_steps=2) == pytest.approx([.5] + [1] * 8 + [.5])


def test_per_experience_rewarming_with_its_own_warmup_and_peak():
    got = lrs([4, 4], name="cosine", scope="experience", warmup_steps=[2, 1], peak_lr=[1.0, 0.5])
    # experience 0: warm-up 0.5, 1, then cosine over 2 steps (p = 0, 0.5); experience 1 re-warms
    # in one step to its peak 0.5, then cosine over 3 steps (p = 0, 1/3, 2/3)
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5, 0.5, 0.375, 0.125])
    # one number for every experience
    assert lrs([3, 3], name="linear", scope="experience") == pytest.approx([1, 2 / 3, 1 / 3] * 2)


def test_infinite_schedule_warms_once_keeps_a_constant_and_anneals_at_the_end():
    got = lrs([5, 5], name="infinite", warmup_steps=2, cooldown_steps=2, constant_lr=0.5, min_lr=0.05,
              decay_fraction=0.2)
    # warm-up from min_lr: 0.05 + 0.95 / 2; cool-down cos from 1 to 0.5 (q = 0, 0.5); constant
    # across the experience boundary at step 5; anneal 0.5 * 0.1 ** p over the last 2 steps
    assert got == pytest.approx([0.525, 1.0, 1.0, 0.75, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5 * 0.1 ** 0.5])


def test_past_the_layout_the_last_lr_is_kept():
    s = Schedule(ScheduleConfig(name="cosine"), 1.0, [10])
    assert s.lr_at(50) == s.lr_at(9)


@pytest.mark.parametrize("cfg, layout, match", [
    ({"name": "cosinus"}, [4], "cosine"),
    ({"scope": "task"}, [4], "scope"),
    ({"name": "constant", "warmup_steps": [1, 2]}, [4, 4], "scope=experience"),
    ({"name": "cosine", "scope": "experience", "peak_lr": [1.0]}, [4, 4], "2 experiences"),
    ({"name": "infinite", "scope": "experience", "constant_lr": 0.5, "min_lr": 0.01}, [4], "scope=run"),
    ({"name": "infinite", "constant_lr": 0.5}, [4], "min_lr"),
    ({"name": "cosine"}, [], "number of steps"),
    ({"name": "wsd", "decay_fraction": 1.5}, [4], "decay_fraction"),
    ({"name": "cosine", "cooldown_steps": 10}, [4], "does not apply to the 'cosine' schedule .*infinite"),
])
def test_bad_schedules_are_config_errors(cfg, layout, match):
    with pytest.raises(ConfigError, match=match):
        Schedule(ScheduleConfig(**cfg), 0.1, layout)


def test_experience_scope_needs_visible_boundaries_and_a_positive_lr():
    with pytest.raises(ConfigError, match="hides them"):
        Schedule(ScheduleConfig(name="cosine", scope="experience"), 0.1, [4, 4], boundaries_visible=False)
    with pytest.raises(ConfigError, match="lr > 0"):
        Schedule(ScheduleConfig(name="cosine"), 0.0, [4])


def test_apply_keeps_each_groups_ratio_and_refuses_a_strategy_that_sets_the_lr_itself():
    w1, w2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w1]}, {"params": [w2], "lr": 0.2}], lr=0.1)
    s = Schedule(ScheduleConfig(name="linear"), 0.1, [4])
    s.apply(opt)
    s.apply(opt)                                         # step 1: 0.1 * 0.75
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.075, 0.15]) and s.position == 2
    opt.param_groups[0]["lr"] = 0.01                     # someone else's schedule
    with pytest.raises(ConfigError, match="own learning-rate schedule"):
        s.apply(opt)


def test_the_base_class_sets_the_lr_before_each_step():
    class Tiny(Strategy):
        pass
    cfg = Strategy.Config(name="finetune", lr=0.1, schedule=ScheduleConfig(name="step", milestones=[2], gamma=0.5))
    s = Tiny(torch.nn.Linear(3, 2), cfg, num_classes=2)
    s.setup()
    seen = []
    s.optimizer.step = (lambda step: (lambda *a, **k: (seen.append(s.optimizer.param_groups[0]["lr"]), step())))(
        s.optimizer.step)
    for _ in range(4):
        s.optimize(s.model(torch.ones(1, 3)).sum())
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05])
    state = s.state_dict()
    assert state["schedule"] == {"position": 4}
    fresh = Tiny(torch.nn.Linear(3, 2), cfg, num_classes=2)
    fresh.setup()
    fresh.load_state_dict(state)
    assert fresh.lr_schedule.position == 4
    # no schedule configured: the lr is left alone (strategies with their own schedules keep working)
    plain = Tiny(torch.nn.Linear(3, 2), Strategy.Config(name="finetune", lr=0.1), num_classes=2)
    plain.setup()
    assert plain.lr_schedule is None and "schedule" not in plain.state_dict()


def tiny(tmp_path, strategy="finetune", **extra):
    over = {"scenario.name": "class_split", "scenario.dataset": "synthetic", "scenario.n_experiences": 3,
            "scenario.classes": "[0,1,2,3,4,5]", "model.name": "mlp", "model.args": "{hidden: 32}",
            "threads": 1, "strategy.name": strategy, "strategy.epochs": 2, "strategy.batch_size": 25,
            "strategy.lr": 0.05, "logging.tensorboard": False, "logging.plots": False, "eval_initial": False,
            "logging.log_every": 1}
    over.update(extra)
    return load_config(None, quick_overrides(tmp_path, **over))


COSINE = {"strategy.schedule.name": "cosine", "strategy.schedule.scope": "experience",
          "strategy.schedule.warmup_steps": 3, "strategy.schedule.min_lr": 0.001}


@pytest.mark.parametrize("name", ["finetune", "er", "derpp", "lwf", "ewc", "joint", "fpf", "kfpf"])
def test_every_strategy_follows_the_schedule(tmp_path, name):
    """The lr recorded after every step (results ``lr``) is the schedule's, for each strategy."""
    extra = {"strategy.buffer_size": 30} if name in ("er", "derpp", "kfpf", "fpf") else {}
    if name in ("fpf", "kfpf"):                       # FPF's own fine-tuning phases use their own optimizer
        extra.update({"strategy.fpf_modules": "[head]", "strategy.fpf_steps": 5})
    res = run(tiny(tmp_path, name, **COSINE, **extra), str(tmp_path / name))
    steps = [s for s, _ in res["lr"]]
    per_exp = 2 * 8                                   # 2 classes x 100 samples / 25 per batch, 2 epochs
    if name == "joint":                               # trains on everything seen: steps grow
        assert steps[-1] > 3 * per_exp
        return
    expected = Schedule(ScheduleConfig(name="cosine", scope="experience", warmup_steps=3, min_lr=0.001), 0.05,
                        [per_exp] * 3).lrs()
    assert steps == list(range(1, 3 * per_exp + 1))
    assert [lr for _, lr in res["lr"]] == pytest.approx(expected)
    assert res["lr"][per_exp][1] == pytest.approx(0.001 + (0.05 - 0.001) / 3)   # re-warmed at experience 1


def test_a_strategy_without_optimizer_rejects_a_schedule(tmp_path):
    with pytest.raises(ConfigError, match="no optimizer"):
        run(tiny(tmp_path, "nmc", **COSINE), str(tmp_path / "nmc"))


def test_resume_continues_the_schedule_exactly(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "finetune", **{**COSINE, "strategy.momentum": 0.9, "eval_every": 2})
    full = run(cfg, str(tmp_path / "full"))

    from strategies.finetune import Finetune
    original = Finetune.before_experience

    def crash_at_2(self, exp):
        if exp.index == 2:
            raise RuntimeError("killed")
        return original(self, exp)

    monkeypatch.setattr(Finetune, "before_experience", crash_at_2)
    with pytest.raises(RuntimeError):
        run(cfg, str(tmp_path / "killed"))
    monkeypatch.setattr(Finetune, "before_experience", original)
    assert main(["run", "--resume", str(tmp_path / "killed")]) == 0
    import json
    resumed = json.load(open(tmp_path / "killed" / "results.json"))
    assert resumed["lr"] == full["lr"]
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    assert resumed["continual_eval"] == full["continual_eval"]


def test_an_online_strategy_follows_the_schedule(tmp_path):
    """Test-time adaptation: one optimizer step per unlabelled batch, the schedule over the stream."""
    over = {"scenario.name": "synthetic_shift", "scenario.n_domains": 2, "scenario.num_classes": 4,
            "scenario.n_per_class": 32, "strategy.name": "tent", "strategy.batch_size": 32, "strategy.lr": 0.01,
            "model.name": "small_cnn", "model.args": "{width: 4}", "threads": 1, "logging.log_every": 1,
            "logging.tensorboard": False, "logging.plots": False,
            "strategy.schedule.name": "linear", "strategy.schedule.warmup_steps": 2}
    res = run(load_config(None, quick_overrides(tmp_path, **over)), str(tmp_path / "tent"))
    n = len(res["lr"])
    assert n >= 4 and [s for s, _ in res["lr"]] == list(range(1, n + 1))
    expected = Schedule(ScheduleConfig(name="linear", warmup_steps=2), 0.01, [n]).lrs()
    assert [lr for _, lr in res["lr"]] == pytest.approx(expected)
