"""ZSCL and the CLIP baselines (clip_finetune, clip_lwf, wise_ft) on a tiny random CLIP: the
distillation loss against a hand formula, the weight ensemble is the running mean, the schedule is
ZSCL's, the parameters that must change do (logit_scale does not), and a whole MTIL run through the
runner reports ZSCL's Transfer / Avg / Last."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from cl.config import load_config  # noqa: E402
from cl.errors import ConfigError  # noqa: E402
from cl.runner import build, run  # noqa: E402
from strategies._weight_ensemble import WeightEnsemble  # noqa: E402
from strategies.clip_finetune import cosine_lr  # noqa: E402
from strategies.zscl import soft_distillation  # noqa: E402

QUIET = ["logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false",
         "device=cpu"]
STREAM = ["scenario.name=class_split", "scenario.dataset=synthetic", "scenario.dataset_args.num_classes=4",
          "scenario.dataset_args.n_train=8", "scenario.dataset_args.n_test=4", "scenario.n_experiences=2",
          "model.name=clip", "model.args.arch=cl-test-tiny-clip", "strategy.batch_size=4", "eval_initial=false"]


def built(tmp_path, name, *extra):
    cfg = load_config(None, [f"output_dir={tmp_path}", f"strategy.name={name}", *STREAM, *QUIET, *extra])
    return build(cfg)


def test_soft_distillation_is_the_hand_formula():
    t = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    s = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, -1.0]])
    T = 2.0
    expected = 0.0
    for tr, sr in zip(t.tolist(), s.tolist()):
        zt = sum(math.exp(v / T) for v in tr)
        zs = sum(math.exp(v / T) for v in sr)
        expected += -sum(math.exp(a / T) / zt * (b / T - math.log(zs)) for a, b in zip(tr, sr))
    expected = expected / 2 * T ** 2
    assert soft_distillation(t, s, T).item() == pytest.approx(expected, rel=1e-6)


def test_weight_ensemble_is_the_running_mean_of_start_and_snapshots():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    we = WeightEnsemble([p])
    seen = [p.detach().clone()]
    for v in ([3.0, 0.0], [5.0, 4.0], [-1.0, 1.0]):
        with torch.no_grad():
            p.copy_(torch.tensor(v))
        we.update()
        seen.append(p.detach().clone())
        assert torch.allclose(we.mean[0], torch.stack(seen).mean(0))
    we.copy_to_parameters()
    assert torch.allclose(p, torch.stack(seen).mean(0)) and we.count == 3


def test_cosine_schedule_is_zscl_utils_cosine_lr():
    base = 1e-5
    assert cosine_lr(0, base, 100, 1000) == pytest.approx(base / 100)      # (step + 1) / warmup
    assert cosine_lr(99, base, 100, 1000) == pytest.approx(base)
    assert cosine_lr(100, base, 100, 1000) == pytest.approx(base)
    assert cosine_lr(550, base, 100, 1000) == pytest.approx(0.5 * base)
    assert cosine_lr(1000, base, 100, 1000) == pytest.approx(0.0, abs=1e-20)


def test_zscl_distillation_loss_matches_formula_on_the_model(tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text("a dog on a beach\na red car\nthree apples\n")
    r = built(tmp_path, "zscl", "strategy.ref_images=current", f"strategy.ref_texts={text}")
    s = r.strategy
    exp = r.scenario.experiences[0]
    s.before_experience(exp)
    with torch.no_grad():                                   # make student and teacher differ
        for p in s.clip.clip.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = next(exp.train.batches(4)).x
    with torch.no_grad():
        T = s.teacher.encode_text(s.clip.tokenize(["a dog on a beach", "a red car", "three apples"]))
        zs = s.clip.scale * s.clip.encode_image(x) @ T.t()
        zt = s.clip.scale * s.teacher.encode_image(x) @ T.t()
        expected = soft_distillation(zt, zs, 2.0) + soft_distillation(zt.t(), zs.t(), 2.0)
        assert torch.allclose(s.ref_text_emb, T, atol=1e-6)
        assert s.distillation_loss(x).item() == pytest.approx(expected.item(), rel=1e-5)
    assert s.cfg.weight_ensemble_every == 100 and s.cfg.l2 == 1.0 and s.cfg.label_smoothing == 0.2


def test_zscl_trains_both_towers_keeps_logit_scale_and_ends_on_the_ensemble(tmp_path):
    r = built(tmp_path, "zscl", "strategy.ref_images=current", "strategy.ref_texts=current",
              "strategy.weight_ensemble_every=2", "strategy.lr=1e-3", "strategy.warmup_steps=1")
    s = r.strategy
    exp = r.scenario.experiences[0]
    before = {k: p.detach().clone() for k, p in s.clip.clip.named_parameters()}
    s.before_experience(exp)
    snaps = [[p.detach().clone() for p in s.parameters_to_train()]]
    for i, batch in enumerate(exp.train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0))):
        s.train_step(batch)
        if i % 2 == 0:
            snaps.append([p.detach().clone() for p in s.parameters_to_train()])
    s.after_experience(exp)
    for j, p in enumerate(s.parameters_to_train()):
        assert torch.allclose(p, torch.stack([sn[j] for sn in snaps]).mean(0), atol=1e-6)
    after = dict(s.clip.clip.named_parameters())
    assert torch.equal(after["logit_scale"], before["logit_scale"])
    assert not torch.equal(after["visual.conv1.weight"], before["visual.conv1.weight"])
    assert not torch.equal(after["text_projection"], before["text_projection"])


def test_l2_pull_is_the_sum_of_squared_differences(tmp_path):
    r = built(tmp_path, "clip_finetune", "strategy.l2=0.5")
    s = r.strategy
    exp = r.scenario.experiences[0]
    s.before_experience(exp)
    with torch.no_grad():
        s.clip.clip.text_projection.add_(0.1)
    batch = next(exp.train.batches(4))
    with torch.no_grad():
        with_pull = s.loss(batch)
        s.anchor = None
        without = s.loss(batch)
    n = s.clip.clip.text_projection.numel()
    assert (with_pull - without).item() == pytest.approx(0.5 * n * 0.01, rel=1e-4)


def test_wise_ft_interpolates_with_the_task_start(tmp_path):
    r = built(tmp_path, "wise_ft", "strategy.lr=1e-3", "strategy.warmup_steps=1")
    s = r.strategy
    exp = r.scenario.experiences[0]
    s.before_experience(exp)
    start = [p.detach().clone() for p in s.parameters_to_train()]
    for batch in exp.train.batches(4):
        s.train_step(batch)
    tuned = [p.detach().clone() for p in s.parameters_to_train()]
    s.after_experience(exp)
    for p, a, b in zip(s.parameters_to_train(), tuned, start):
        assert torch.allclose(p, 0.8 * a + 0.2 * b, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(tuned, start))


def test_clip_lwf_teacher_is_the_model_at_the_start_of_each_task(tmp_path):
    r = built(tmp_path, "clip_lwf", "strategy.lr=1e-3", "strategy.warmup_steps=1")
    s = r.strategy
    e0, e1 = r.scenario.experiences
    s.before_experience(e0)
    for batch in e0.train.batches(4):
        s.train_step(batch)
    s.after_experience(e0)
    s.before_experience(e1)
    for (k, p), q in zip(s.clip.clip.named_parameters(), s.teacher.clip.parameters()):
        assert torch.equal(p, q), k
    assert not any(q.requires_grad for q in s.teacher.parameters())


def test_refusals_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="ref_images"):
        built(tmp_path, "zscl")
    with pytest.raises(ConfigError, match="needs a CLIP model"):
        build(load_config(None, [f"output_dir={tmp_path}", "strategy.name=clip_finetune", *STREAM[:6],
                                 "model.name=mlp", *QUIET]))
    with pytest.raises(ConfigError, match="hide_boundaries"):
        run(load_config(None, [f"output_dir={tmp_path}", "strategy.name=clip_finetune", *STREAM, *QUIET,
                               "hide_boundaries=true"]), str(tmp_path / "h"))


def test_mtil_run_reports_zscl_transfer_avg_last(tmp_path):
    import os
    os.makedirs(tmp_path / "MNIST" / "raw")
    rng = np.random.default_rng(0)
    for pre, n in (("train", 20), ("t10k", 10)):
        x = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            with open(tmp_path / "MNIST" / "raw" / f"{pre}-{kind}-ubyte", "wb") as f:
                f.write(bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes())
    cfg = load_config(None, [f"output_dir={tmp_path}", "strategy.name=zscl", "scenario.name=mtil",
                             "scenario.datasets=[digits,mnist]", f"scenario.root={tmp_path}", "scenario.image_size=16",
                             "scenario.train_fraction=0.02", "scenario.test_fraction=0.05",
                             "model.name=clip", "model.args.arch=cl-test-tiny-clip", "strategy.batch_size=8",
                             "strategy.ref_images=current", "strategy.ref_texts=current", *QUIET])
    res = run(cfg, str(tmp_path / "run"))
    R = np.array(res["task_il_accuracy_matrix"])
    m = res["metrics"]
    assert R.shape == (2, 2) and len(res["initial_task_il_accuracy"]) == 2
    assert m["task_il_transfer"] == pytest.approx(R[0, 1])
    assert m["task_il_average_all_entries"] == pytest.approx(R.mean())
    assert m["task_il_last"] == pytest.approx(R[1].mean())
    assert [t["name"] for t in res["tasks"]] == ["digits", "mnist"]


@pytest.mark.parametrize("name", ["zscl_mtil_order1_last.yaml", "zscl_mtil_order2_last.yaml"])
def test_reproduce_files_carry_the_authors_settings(name):
    """scripts/ZSCL.sh + args.py: lr 1e-5 (5e-5 for Aircraft and MNIST), label smoothing 0.2, AdamW
    wd 0, batch 64, 100 warm-up steps, T = 2, weight ensemble every 100 steps, L2 weight 1, 1,001
    iterations per task, CLIP ViT-B/16 OpenAI weights."""
    import os

    from cl.config import build_config, load_yaml
    from conftest import REPO
    cfg = build_config(load_yaml(os.path.join(REPO, "experiments", "reproduce", name))["experiment"])
    s = cfg.strategy
    assert (s.name, s.optimizer, s.lr, dict(s.lr_by_task), s.weight_decay, s.batch_size) == \
        ("zscl", "adamw", 1e-5, {"aircraft": 5e-5, "mnist": 5e-5}, 0.0, 64)
    assert (s.label_smoothing, s.warmup_steps, s.temperature, s.weight_ensemble_every, s.l2) == (0.2, 100, 2.0, 100, 1.0)
    assert s.image_loss and s.text_loss and s.ref_model == "initial"
    assert cfg.scenario.train_samples_per_task == 64064 and cfg.scenario.order in ("I", "II")
    assert (cfg.model.args.arch, cfg.model.args.pretrained) == ("ViT-B-16", "openai")
