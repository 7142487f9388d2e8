"""Fractional replay, domain-mixture schedulers (static, staged, ODM, an evaluation-feedback slot) with
known values, and the existing strategies (finetune, joint, EWC, LwF) on token streams."""
import math

import numpy as np
import pytest
import torch

from cl.data import Experience
from cl.errors import ConfigError
from cl.models.gpt import gpt
from cl.registry import STRATEGIES
from cl.runner import run
from cl.strategy import StreamInfo
from cl.tokens import TokenData
from strategies._mixture import OnlineDataMixing, StagedMixture, resolve_weights
from test_lm_scenario import lm_cfg, write_domain

CTX = 8


def exp(i, name, n_tokens, offset):
    """An experience whose tokens all lie in [offset, offset + 10) (so the domain of a window is visible)."""
    g = torch.Generator().manual_seed(i)
    tr = TokenData(torch.randint(0, 10, (n_tokens,), generator=g) + offset, CTX, vocab_size=64, name=name)
    te = TokenData(torch.randint(0, 10, (200,), generator=g) + offset, CTX, vocab_size=64, name=name)
    return Experience(index=i, train=tr, test=te, classes=list(range(64)), domain=name)


def strategy(name, n_exp=3, **cfg):
    cls = STRATEGIES.get(name)
    model = gpt(64, (CTX,), size="test")
    s = cls(model, cls.Config(name=name, batch_size=16, **cfg),
            stream=StreamInfo(num_experiences=n_exp, epochs=1, batch_size=16, num_classes=64, input_shape=(CTX,)))
    s.setup()
    return s


def windows_by_domain(data, offsets):
    """Count the windows of each domain over one pass of ``data``."""
    counts = dict.fromkeys(offsets, 0)
    for b in data.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0)):
        for row in b.x:
            counts[int(row[0]) // 10 * 10] += 1
    return counts


def test_replay_fraction_is_exact_and_split_by_weighting():
    e = [exp(0, "a", 4001, 0), exp(1, "b", 1601, 10), exp(2, "c", 1601, 20)]
    s = strategy("token_replay", replay_fraction=0.25)
    s.before_experience(e[0])
    assert s.train_data(e[0]) is e[0].train                      # nothing to replay in the first experience
    s.before_experience(e[1])
    counts = windows_by_domain(s.train_data(e[1]), (0, 10))
    assert counts == {0: 50, 10: 150}                             # 200 windows, 25% replayed
    s.before_experience(e[2])
    assert windows_by_domain(s.train_data(e[2]), (0, 10, 20)) == {0: 25, 10: 25, 20: 150}   # uniform split
    s = strategy("token_replay", replay_fraction=0.3, replay_weighting="tokens")
    for x in e:
        s.before_experience(x)
    assert np.allclose(s.replay_weights("c"), [0.3 * 4001 / 5602, 0.3 * 1601 / 5602, 0.7])   # by tokens
    with pytest.raises(ConfigError, match="replay_fraction"):
        strategy("token_replay", replay_fraction=1.0)


def test_resolve_weights_known_values():
    assert np.allclose(resolve_weights({"current": 0.75, "previous": 0.25}, ["a", "b", "c"], "c"), [0.125, 0.125, 0.75])
    assert np.allclose(resolve_weights({"a": 1, "current": 3, "zzz_later": 5}, ["a", "b"], "b"), [0.25, 0.75])
    assert np.allclose(resolve_weights({"current": 1, "previous": 1}, ["a"], "a"), [1.0])   # no earlier domain yet
    with pytest.raises(ConfigError, match="nothing to train on"):
        resolve_weights({"previous": 1}, ["a"], "a")


def test_staged_curriculum_switches_at_its_boundary():
    st = StagedMixture([{"until": 0.5, "weights": {"a": 2, "current": 8}},
                        {"experience": 1, "weights": {"a": 1, "current": 7, "b": 2}},
                        {"weights": {"current": 1}}])
    assert np.allclose(st.weights(["a", "b"], "b", 1, 0.2), [0.2, 0.8])
    assert np.allclose(st.weights(["a", "b"], "b", 1, 0.7), [0.1, 0.9])          # b is current and named: 7 + 2
    assert np.allclose(st.weights(["a", "b", "c"], "c", 2, 0.9), [0, 0, 1])


def test_domain_mixture_static_counts_through_the_data():
    e = [exp(0, "a", 4001, 0), exp(1, "b", 2001, 10)]
    s = strategy("domain_mixture", n_exp=2, weights={"current": 0.6, "a": 0.4})
    for x in e:
        s.before_experience(x)
    data = s.train_data(e[1])
    assert windows_by_domain(data, (0, 10)) == {0: 100, 10: 150}                 # 250 windows: 40% / 60%
    assert s.results()["mixture_windows"] == {"a": 100, "b": 150}
    s = strategy("domain_mixture", n_exp=2, weights={"current": 1.0, "spanish": 0.5})
    s.before_experience(e[0])
    with pytest.raises(ConfigError, match="unknown domain"):
        s.before_experience(e[1])                                                 # last experience: typo found


def test_odm_exp3_update_known_values():
    odm = OnlineDataMixing(warmup_steps=1, reward_scale=10.0)
    odm.begin_experience(["a", "b"], 1)
    assert odm.weights(["a", "b"], "b", 1, 0).tolist() == [0.5, 0.5]
    odm.observe("train", 1, {"a": 9.0, "b": 9.0})                                # warm-up step: no change
    assert odm.pi.tolist() == [0.5, 0.5] and odm.R.tolist() == [0, 0]
    odm.observe("train", 2, {"a": 2.0, "b": 4.0})                                # first update (n = 1)
    # R = (loss / 10) / 0.5 = [0.4, 0.8]; eps_1 = min(1/2, sqrt(ln 2 / 2)) = 0.5 -> (1 - K eps) = 0: uniform
    assert np.allclose(odm.R, [0.4, 0.8]) and np.allclose(odm.pi, [0.5, 0.5])
    odm.observe("train", 3, {"a": 2.0, "b": 4.0})                                # n = 2
    R = np.array([0.8, 1.6])
    eps = math.sqrt(math.log(2) / 4)
    z = np.exp(0.5 * R)
    expect = (1 - 2 * eps) * z / z.sum() + eps
    assert np.allclose(odm.R, R) and np.allclose(odm.pi, expect / expect.sum())
    assert odm.pi[1] > odm.pi[0]                                                  # the higher-loss domain gains


class Recorder:
    """A feedback scheduler (the Data Mixing Agent slot): records held-out losses, then favours the worst."""
    wants_eval = True
    calls = []

    def __init__(self, boost=3.0):
        self.boost, self.worst = boost, None

    def begin_experience(self, domains, experience):
        self.worst = None

    def weights(self, domains, current, experience, progress):
        w = np.ones(len(domains))
        if self.worst in domains:
            w[domains.index(self.worst)] = self.boost
        return w / w.sum()

    def observe(self, kind, step, losses):
        if kind == "eval":
            Recorder.calls.append((step, dict(losses)))
            self.worst = max(losses, key=losses.get)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_evaluation_feedback_slot_receives_held_out_losses():
    Recorder.calls.clear()
    e = [exp(0, "a", 4001, 0), exp(1, "b", 2001, 10)]
    s = strategy("domain_mixture", n_exp=2, scheduler="test_lm_strategies:Recorder", scheduler_args={"boost": 3.0},
                 feedback_every=4, feedback_tokens=80)
    for x in e:
        s.before_experience(x)
    for b in s.train_data(e[1]).batches(16, generator=torch.Generator().manual_seed(0)):
        s.train_step(b)
    assert [c[0] for c in Recorder.calls] == [4, 8, 12, 16]                       # 250 windows / 16 = 16 steps
    assert set(Recorder.calls[0][1]) == {"a", "b"}
    assert all(2.0 < v < 5.0 for v in Recorder.calls[0][1].values())             # ~ln(64) = 4.16 untrained
    assert s.model.training


@pytest.mark.parametrize("name", ["finetune", "joint", "ewc", "lwf", "token_replay", "domain_mixture"])
def test_strategies_run_on_token_streams(name, tmp_path):
    write_domain(tmp_path / "en.txt", "en")
    write_domain(tmp_path / "es.txt", "es", seed=1)
    extra = {"ewc": {"strategy.fisher_max_samples": 32, "strategy.e_lambda": 100.0},
             "lwf": {"strategy.alpha": 1.0}, "token_replay": {"strategy.replay_fraction": 0.25},
             "domain_mixture": {"strategy.scheduler": "odm", "strategy.scheduler_args": {"warmup_steps": 2}}}
    cfg = lm_cfg(tmp_path, name, eval_every=0, **{"logging.plots": False, "strategy.lr": 3e-3, **extra.get(name, {})})
    res = run(cfg, str(tmp_path / name))
    L = np.array(res["loss_matrix"])
    assert res["status"] == "complete" and L.shape == (2, 2) and np.isfinite(L).all()
    assert L[1, 1] < math.log(256) - 1.0                                          # learned the second domain
    sr = res["strategy_results"]
    if name == "ewc":
        assert sr["fisher_total"] > 0
    if name == "token_replay":
        assert sr["replayed_fraction"] == 0.25 and sr["replayed_windows"] == {"en": 50}
    if name == "domain_mixture":
        assert sum(sr["mixture_windows"].values()) == 400 and sr["mixture_windows"]["en"] > 0
    if name == "joint":
        assert res["timings"]["train_tokens"] == 3200 + 2 * 3200                  # the union at experience 2


def test_token_strategies_refuse_image_streams(tmp_path):
    from cl.config import load_config
    cfg = load_config(None, [f"output_dir={tmp_path}", "scenario.name=class_split", "scenario.dataset=synthetic",
                             "model.name=mlp", "strategy.name=token_replay", "logging.tensorboard=false"])
    with pytest.raises(ConfigError, match="text_domains"):
        run(cfg, str(tmp_path / "x"))
