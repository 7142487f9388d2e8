"""MULTI-LANE (strategies/multi_lane.py) and the prompt baselines on multi-label streams, tiny ViT."""
import os

import pytest
import torch

from cl.config import load_config
from cl.runner import build, run
from conftest import REPO, quick_overrides

ML = os.path.join(REPO, "experiments", "multilabel", "synthetic_mosaic.yaml")
VIT = {"model.name": "vit_tiny_cifar", "model.args.embed_dim": 16, "model.args.depth": 5, "model.args.num_heads": 2,
       "strategy.batch_size": 16, "strategy.epochs": 1, "logging.plots": False, "logging.tensorboard": False}


def _cfg(tmp_path, **kw):
    return load_config(ML, quick_overrides(tmp_path, **{**VIT, "strategy.name": "multi_lane", **kw}))


def test_next_task_copies_and_old_pathway_stays_frozen(tmp_path):
    r = build(_cfg(tmp_path, **{"strategy.lr": 0.05}))
    s, exps = r.strategy, r.scenario.experiences
    sel0 = s.lanes.selectors[0].detach().clone()
    s.before_experience(exps[0])
    for b in s.train_data(exps[0]).batches(16, device="cpu"):
        s.train_step(b)
    s.after_experience(exps[0])
    trained0 = s.lanes.selectors[0].detach().clone()
    prompt0 = s.lanes.prompts[0][:, 0].detach().clone()
    assert not torch.equal(trained0, sel0)                                 # task 0's selectors trained
    s.before_experience(exps[1])
    assert torch.equal(s.lanes.selectors[1], trained0)                     # task 1 starts from task 0's pathway
    assert torch.equal(s.lanes.prompts[0][:, 1], prompt0)
    head = s.vit.head.weight.detach().clone()
    for b in s.train_data(exps[1]).batches(16, device="cpu"):
        s.train_step(b)
    assert torch.equal(s.lanes.selectors[0], trained0)                     # the old pathway is frozen
    assert torch.equal(s.lanes.prompts[0][:, 0], prompt0)
    assert not torch.equal(s.lanes.selectors[1], trained0)
    old = exps[0].classes
    assert torch.equal(s.vit.head.weight[old], head[old])                  # masked BCE: old classes' head rows untouched
    new = exps[1].classes
    assert not torch.equal(s.vit.head.weight[new], head[new])


def test_predict_takes_each_class_from_its_pathway(tmp_path):
    r = build(_cfg(tmp_path))
    s, exps = r.strategy, r.scenario.experiences
    for e in exps[:2]:
        s.before_experience(e)
        s.after_experience(e)
    with torch.no_grad():
        torch.nn.init.normal_(s.lanes.selectors, std=1.0)                  # make the two pathways differ
    x = exps[0].test.subset(range(4)).batches(4).__next__().x
    out = s.predict(x)
    per = s.pathway_logits(x, [0, 1])
    for t in (0, 1):
        c = exps[t].classes
        assert torch.allclose(out[:, c], per[t][:, c], atol=1e-5)
    unseen = exps[2].classes
    assert torch.isinf(out[:, unseen]).all()                               # not learned yet: -inf
    assert not torch.allclose(per[0], per[1])


def test_drop_and_replace_summaries_use_the_selectors(tmp_path):
    """With one selector and zero prompts, the pathway differs from a run with the selector replaced:
    the summary tokens (not the raw patches) are what the pathway's attention sees."""
    r = build(_cfg(tmp_path, **{"strategy.num_selectors": 1, "strategy.num_prompts": 0}))
    s = r.strategy
    x = r.scenario.experiences[0].test.subset(range(3)).batches(3).__next__().x
    a = s.pathway_logits(x, [0]).detach()
    with torch.no_grad():
        s.lanes.selectors[0] = -s.lanes.selectors[0]
    assert not torch.allclose(a, s.pathway_logits(x, [0]).detach())
    assert len(s.lanes.prompts) == 0


def test_multi_lane_run_has_no_forgetting_on_mlcil(tmp_path):
    res = run(_cfg(tmp_path, **{"strategy.epochs": 2, "strategy.lr": 0.02}), str(tmp_path / "r"))
    M = res["map_matrix"]
    # each class's logit depends only on its task's frozen pathway and head row: old columns never move
    assert M[2][0] == pytest.approx(M[0][0]) and M[2][1] == pytest.approx(M[1][1])
    assert res["metrics"]["forgetting"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name,extra", [("l2p", {}), ("dualprompt", {}), ("coda_prompt", {"strategy.pool_size": 9})])
def test_prompt_baselines_run_multilabel(tmp_path, name, extra):
    res = run(_cfg(tmp_path, **{"strategy.name": name, **extra}), str(tmp_path / "r"))
    assert res["status"] == "complete" and len(res["map_matrix"]) == 3
    assert all(0 <= v <= 1 for v in res["map_per_step"])


def test_single_label_cil_mode(tmp_path):
    over = quick_overrides(tmp_path, **{**VIT, "strategy.name": "multi_lane", "scenario.name": "class_split",
                                        "scenario.dataset": "synthetic", "scenario.n_experiences": 2,
                                        "scenario.dataset_args.num_classes": 4, "scenario.dataset_args.n_train": 16,
                                        "scenario.dataset_args.n_test": 8, "strategy.epochs": 10, "strategy.lr": 0.05})
    res = run(load_config(None, ["name=cil"] + over), str(tmp_path / "cil"))
    R, T = res["accuracy_matrix"], res["task_il_accuracy_matrix"]
    assert R[0][0] > 0.7 and T[1][1] > 0.7          # 2-way tasks on Gaussian prototypes: well above chance
    assert T[1][0] == pytest.approx(T[0][0])        # task 0's pathway and head rows are untouched by task 1
