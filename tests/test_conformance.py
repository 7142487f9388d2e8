"""The runner<->strategy contract, checked for every registered strategy (docs/adding-a-strategy.md).

Parametrized over ``STRATEGIES.names()``: a newly registered strategy is picked up with no edit
here. Each strategy runs on a tiny stream of its protocol, on the first of the small models users
shrink runs to (MLP, small CNN, a tiny ViT) that it accepts; the models it refuses must be refused
with a clear ConfigError (no traceback). Checked:

- one pass and several epochs: the run completes, the matrix has one row per experience, and the
  parameters the strategy trains changed while the frozen ones stayed bit-identical;
- hidden boundaries: a strategy that declares ``needs_boundaries`` stops before training (nothing
  written); any other runs to completion without a single boundary hook call;
- a crash right after experience 1 and ``--resume`` give the results of the uninterrupted run.
"""
import json
import os

import pytest
import torch

from cl import faults
from cl.config import load_config
from cl.errors import ConfigError
from cl.registry import STRATEGIES, load_builtins
from cl.runner import build, run

load_builtins()
NAMES = STRATEGIES.names()

QUIET = ["logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false",
         "device=cpu"]
TRAIN_EVAL = ["scenario.name=class_split", "scenario.dataset=synthetic", "scenario.dataset_args.num_classes=4",
              "scenario.dataset_args.n_train=12", "scenario.dataset_args.n_test=6", "scenario.n_experiences=2",
              "strategy.batch_size=8", "eval_initial=false"]
ONLINE = ["scenario.name=synthetic_shift", "scenario.n_per_class=8", "scenario.n_domains=2", "strategy.batch_size=8"]
MODELS = {
    "mlp": ["model.name=mlp", "model.args.hidden=16"],
    "small_cnn": ["model.name=small_cnn", "model.args.width=4"],
    "vit": ["model.name=vit_tiny_cifar", "model.args.embed_dim=16", "model.args.depth=5", "model.args.num_heads=2",
            "model.args.patch_size=4"],
    "gpt": ["model.name=gpt", "model.args.size=test"],       # token strategies only (see tokens_only)
    "clip": ["model.name=clip", "model.args.arch=cl-test-tiny-clip"],   # vision-language strategies (zscl, tpt, ...)
}
# Small-sample settings some strategies need on a stream this tiny (never their algorithm).
TINY_SETTINGS = {
    "rmt": ["strategy.warmup_samples=16", "strategy.prototype_samples=16"],
    "lsa": ["strategy.adapter_steps=20"],     # the adapter's source training, shortened
    "itta": ["strategy.train_steps=3", "strategy.train_batch_size=8", "strategy.ada_lr=1.0"],  # short source
    # training; ada_lr 1 (not 1e-6) so the test-time blocks visibly move on a batch this small
    "kfpf": ["strategy.k=2", "strategy.fpf_steps=2"],
    "fpf": ["strategy.fpf_steps=2"],
    "coda_prompt": ["strategy.pool_size=10"],   # orthogonal components need pool_size <= the tiny ViT's width 16
    # Entropy / PLPD sample filters tuned for trained source models reject every prediction of the
    # untrained tiny model (entropy ~ ln C): open them so that the update itself is exercised.
    "eata": ["strategy.margin_e0=1.0"], "sar": ["strategy.margin_e0=1.0"],
    "deyo": ["strategy.margin_e0=1.0", "strategy.margin=1.0", "strategy.plpd=0.0"],
    "zscl": ["strategy.ref_images=current", "strategy.ref_texts=current"],  # no ImageNet / Conceptual Captions here
    "difftpt": ["strategy.pipeline=tiny-random", "strategy.num_inference_steps=1", "strategy.n_views=8",
                "strategy.diffusion_views=4", "strategy.generation_batch=64"],  # no SD weights here; fewer views
    # No source-trained diffusion model here: a tiny random one, few steps, a filter that fits its 8x8 images.
    "dda": ["strategy.pipeline=tiny-random", "strategy.num_inference_steps=4", "strategy.steps=2",
            "strategy.downsample=2", "strategy.projection_batch=64"],
    "sda": ["strategy.pipeline=tiny-random", "strategy.num_inference_steps=4", "strategy.steps=2",
            "strategy.downsample=2", "strategy.projection_batch=64", "strategy.per_class=4",
            "strategy.finetune_epochs=2", "strategy.finetune_batch=8"],   # and a short fine-tuning stage
}


def protocol_of(name):
    return STRATEGIES.get(name).protocols[0]


def tokens_only(name):
    """Strategies that mix token windows of text domains (``needs_tokens``) run on a tiny text stream."""
    return bool(getattr(STRATEGIES.get(name), "needs_tokens", None))


def token_stream(tmp_path):
    """Two tiny text domains written into tmp_path (byte tokens, 8-token windows) and the smallest GPT."""
    for k, word in enumerate(("alpha beta gamma ", "uno dos tres ")):
        (tmp_path / f"d{k}.txt").write_text("".join(f"{word * 3}{i}\n" for i in range(60)))
    return ["scenario.name=text_domains", f"scenario.root={tmp_path}", "scenario.domains=[d0.txt,d1.txt]",
            "scenario.context=8", "scenario.train_tokens=128", "strategy.batch_size=8", "eval_initial=false"]


def config(name, tmp_path, model, *extra):
    base = TRAIN_EVAL if protocol_of(name) == "train_eval" else ONLINE
    if tokens_only(name):
        base, model = token_stream(tmp_path), "gpt"
    settings = [s for s in TINY_SETTINGS.get(name, []) if s.split("=")[0].split(".")[1] in
                {f for f in STRATEGIES.config_of(name).__dataclass_fields__}]
    return load_config(None, ["name=c", f"output_dir={tmp_path}", f"strategy.name={name}", *base, *MODELS[model],
                              *settings, *QUIET, *extra])


@pytest.fixture(scope="module")
def model_for():
    """{strategy: the first small model it accepts}; every refusal before it must be a ConfigError."""
    chosen = {}

    def pick(name, tmp_path):
        if name not in chosen:
            refusals = []
            for model in (["gpt"] if tokens_only(name) else [m for m in MODELS if m != "gpt"]):
                try:
                    build(config(name, tmp_path, model))
                except ConfigError as e:
                    refusals.append(f"{model}: {e}")
                    continue
                chosen[name] = model
                break
            else:
                pytest.fail(f"{name} runs on none of the small models: " + " | ".join(refusals))
        return chosen[name]

    return pick


def snapshot(strategy):
    return {k: p.detach().clone() for k, p in strategy.model.named_parameters()}


def trained_names(strategy):
    held = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]} if strategy.optimizer else set()
    return {k for k, p in strategy.model.named_parameters() if id(p) in held}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("epochs", [1, 2])
def test_runs_and_trains_exactly_its_parameters(name, epochs, tmp_path, model_for, monkeypatch):
    model = model_for(name, tmp_path)
    extra = [f"strategy.epochs={epochs}"] if protocol_of(name) == "train_eval" else []
    cfg = config(name, tmp_path, model, *extra)
    built = {}
    import cl.runner as runner_mod
    real_build = runner_mod.build

    def spy(c):
        built["run"] = real_build(c)
        built["before"] = snapshot(built["run"].strategy)
        built["trained"] = trained_names(built["run"].strategy)
        return built["run"]

    monkeypatch.setattr(runner_mod, "build", spy)
    res = run(cfg, str(tmp_path / "run"))
    assert res["status"] == "complete"
    assert res["completed_experiences"] == res["num_experiences"] == 2
    if res["protocol"] == "train_eval":
        assert res["epochs_per_experience"] == epochs
        matrix = res.get("accuracy_matrix") or res["loss_matrix"]
        assert len(matrix) == 2 and all(len(r) == len(res["tasks"]) for r in matrix)
    after = snapshot(built["run"].strategy)
    trained = built["trained"]
    frozen_changed = [k for k in after if k not in trained and not torch.equal(after[k], built["before"][k])]
    assert not frozen_changed, f"{name} changed parameters it does not train: {frozen_changed[:5]}"
    if trained:
        assert any(not torch.equal(after[k], built["before"][k]) for k in trained), f"{name} trained nothing"


@pytest.mark.parametrize("name", [n for n in NAMES if protocol_of(n) == "train_eval"])
def test_hidden_boundaries_refused_before_training_or_never_called(name, tmp_path, model_for, monkeypatch):
    model = model_for(name, tmp_path)
    cls = STRATEGIES.get(name)
    cfg = config(name, tmp_path, model, "hide_boundaries=true")
    probe = build(config(name, tmp_path, model)).strategy      # needs_boundaries may depend on the config
    if probe.needs_boundaries:
        with pytest.raises(ConfigError, match="hide_boundaries"):
            run(cfg, str(tmp_path / "hidden"))
        assert not (tmp_path / "hidden").exists()
        return
    calls = []
    for hook in ("before_experience", "after_experience"):
        monkeypatch.setattr(cls, hook, lambda self, exp, hook=hook: calls.append(hook))
    res = run(cfg, str(tmp_path / "hidden"))
    assert res["status"] == "complete" and res["boundaries_visible"] is False and calls == []


class Crash(Exception):
    pass


@pytest.mark.parametrize("name", NAMES)
def test_crash_after_experience_1_then_resume_equals_uninterrupted(name, tmp_path, model_for, monkeypatch):
    model = model_for(name, tmp_path)
    full = run(config(name, tmp_path, model), str(tmp_path / "full"))

    real_hit = faults.hit

    def crash_once(point):
        if point == "experience":
            raise Crash()
        real_hit(point)

    monkeypatch.setattr(faults, "hit", crash_once)
    with pytest.raises(Crash):
        run(config(name, tmp_path, model), str(tmp_path / "crashed"))
    monkeypatch.setattr(faults, "hit", real_hit)
    with open(tmp_path / "crashed" / "results.json") as f:
        assert json.load(f)["completed_experiences"] == 1
    resumed = run(config(name, tmp_path, model), str(tmp_path / "crashed"), resume=True)
    for key in ("accuracy_matrix", "task_il_accuracy_matrix", "per_domain_error", "domain_accuracy_matrix", "loss_matrix"):
        assert resumed.get(key) == full.get(key), f"{name}: {key} differs after resume"
    assert resumed["strategy_results"] == full["strategy_results"]
    assert os.path.isfile(tmp_path / "crashed" / "checkpoints" / "last.pt")


@pytest.mark.parametrize("name", NAMES)
def test_owns_no_runner_decision(name):
    """The base class owns set-up and the reset snapshot; the runner alone decides the epochs."""
    import inspect

    from cl.strategy import Strategy
    cls = STRATEGIES.get(name)
    assert cls.setup is Strategy.setup, f"{name} overrides setup(); override configure_model/warm_up instead"
    source = "".join(inspect.getsource(k) for k in cls.__mro__ if k.__module__.split(".")[0] == "strategies")
    for forbidden in ("cfg.epochs", "self.scenario", "_initial"):
        assert forbidden not in source, f"{name} reads {forbidden}; use self.stream (docs/adding-a-strategy.md)"
