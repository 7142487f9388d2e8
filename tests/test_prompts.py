"""Prompt-pool and PET strategies on a tiny random-init ViT (strategies/_prompts.py, strategies/{l2p,dualprompt,coda_prompt,lae}.py)."""
import os

import pytest
import torch

from cl import io
from cl.config import ModelConfig, load_config
from cl.data import TensorData
from cl.models import build_model
from strategies._prompts import PromptPool, frozen_query, indexed, orthogonal_rows, split_model, vit_tokens
from cl.runner import CHECKPOINT, build, run

TINY = {"embed_dim": 32, "depth": 5, "num_heads": 2, "patch_size": 8}


def tiny_vit(num_classes=4):
    torch.manual_seed(0)
    cfg = ModelConfig(name="vit_tiny_cifar", args=dict(TINY))
    return build_model(cfg, num_classes, (3, 32, 32))


def config(strategy, tmp_path, *extra):
    return load_config(None, [
        "name=t", f"output_dir={tmp_path}", "device=cpu", "scenario.name=class_split", "scenario.dataset=synthetic",
        "scenario.dataset_args.shape=[3,32,32]", "scenario.dataset_args.num_classes=4",
        "scenario.dataset_args.n_train=8", "scenario.dataset_args.n_test=4", "scenario.n_experiences=2",
        "model.name=vit_tiny_cifar", *[f"model.args.{k}={v}" for k, v in TINY.items()],
        f"strategy.name={strategy}", "strategy.batch_size=8", "strategy.epochs=1", "eval_initial=false",
        "logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false", *extra])


def test_vit_tokens_without_insertions_is_forward_features():
    vit = tiny_vit().eval()
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(vit_tokens(vit, x), vit.forward_features(x), atol=1e-5)


def without_blocks(vit):
    """The ViT with no blocks and no final norm: ``vit_tokens`` then returns its input sequence."""
    vit.blocks, vit.norm = torch.nn.Sequential(), torch.nn.Identity()
    return vit


def test_prompts_inserted_right_after_cls():
    vit = without_blocks(tiny_vit().eval())
    x, prompts = torch.rand(2, 3, 32, 32), torch.randn(5, 32)
    embedded = vit.forward_features(x)                 # [CLS] + 16 patch tokens, position embedded
    out = vit_tokens(vit, x, prompts=prompts)
    assert out.shape == (2, 1 + 5 + 16, 32)
    assert torch.equal(out[:, 0], embedded[:, 0])      # [CLS] first
    assert torch.equal(out[:, 1:6], prompts.expand(2, -1, -1))   # then the prompts, unchanged
    assert torch.equal(out[:, 6:], embedded[:, 1:])    # then the patches


def test_l2p_head_reads_the_selected_prompts_tokens(tmp_path):
    """L2P's head_type='prompt': the head reads the mean of the outputs at the prompt positions."""
    s = build(config("l2p", tmp_path, "strategy.batchwise_prompt=false")).strategy
    without_blocks(s.vit)
    x, query = torch.rand(3, 3, 32, 32), torch.randn(3, 32)
    logits, idx, _ = s.forward(x, query)
    cos = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(s.pool.keys, dim=1).t()
    for b in range(3):
        chosen = cos[b].topk(5).indices
        assert set(idx[b].tolist()) == set(chosen.tolist())
        expected = s.vit.head(s.pool.prompts[chosen].reshape(-1, 32).mean(0))
        assert torch.allclose(logits[b], expected, atol=1e-5)


def test_topk_selection_is_cosine_topk():
    torch.manual_seed(1)
    pool = PromptPool(6, (2, 4), 4)
    q = torch.randn(3, 4)
    idx, sim = pool.select(q, 2)
    cos = torch.stack([torch.nn.functional.cosine_similarity(q[b:b + 1], pool.keys, dim=1) for b in range(3)])
    assert torch.allclose(sim, cos, atol=1e-6)
    for b in range(3):
        assert set(idx[b].tolist()) == set(cos[b].argsort(descending=True)[:2].tolist())
    # pull loss = batch mean of sum over selected keys of (1 - cos)
    assert torch.isclose(pool.pull_loss(sim, idx), (1 - cos.gather(1, idx)).sum(1).mean())
    # a query equal to a key selects that key first
    idx, _ = pool.select(pool.keys[4:5].detach() * 3, 1)
    assert idx.item() == 4


def test_batchwise_selection_takes_most_frequent():
    pool = PromptPool(4, (1, 2), 2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0]]))
    q = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0]])      # key 0 is top-1 twice, key 1 once
    idx, _ = pool.select(q, 1, batchwise=True)
    assert idx.flatten().tolist() == [0, 0, 0]


def test_prefix_changes_attention_only_in_chosen_layers():
    vit = tiny_vit().eval()
    x = torch.rand(2, 3, 32, 32)
    base, pref = [], []
    vit_tokens(vit, x, trace=base)
    prefix = (torch.randn(2, 3, 32), torch.randn(2, 3, 32))
    vit_tokens(vit, x, prefixes={3: prefix}, trace=pref)
    for layer in range(3):
        assert torch.allclose(base[layer], pref[layer], atol=1e-6)
    assert not torch.allclose(base[3], pref[3], atol=1e-3)


def test_compensated_prefix_weights_sum_to_one():
    from strategies._prompts import attention
    vit = tiny_vit().eval()
    attn = vit.blocks[0].attn
    h, pk = torch.randn(2, 7, 32), torch.randn(2, 3, 32)
    v0 = torch.randn(32)
    with_v0 = attention(attn, h, (pk, v0.expand(2, 3, 32)), compensate=True)
    with_zero = attention(attn, h, (pk, torch.zeros(2, 3, 32)), compensate=True)
    # the prefix's attention weights sum to exactly 1, so identical value prefixes add proj(v0) - bias
    assert torch.allclose(with_v0 - with_zero, (v0 @ attn.proj.weight.t()).expand(2, 7, 32), atol=1e-5)
    plain = attention(attn, h, (pk, v0.expand(2, 3, 32)))
    assert not torch.allclose(plain, with_v0, atol=1e-3)


def test_query_cache_rows_equal_frozen_query(tmp_path):
    cfg = config("l2p", tmp_path)
    built = build(cfg)
    scenario, strategy = built.scenario, built.strategy
    exp = scenario.experiences[0]
    data = strategy.train_data(exp)
    assert data.g.tolist() == list(range(len(exp.train)))
    batch = next(data.batches(5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    expected = frozen_query(strategy.vit, strategy.normalize(batch.x))
    assert torch.allclose(strategy.cache.lookup(batch.g), expected, atol=1e-5)
    # the training loss with the cache equals the loss computed without it (no augmentation)
    strategy.before_experience(exp)
    with_cache = strategy.loss(batch)
    without = strategy.loss(batch._replace(g=None))
    assert torch.allclose(with_cache, without, atol=1e-5)


def test_orthogonal_rows():
    t = torch.nn.Parameter(torch.randn(6, 16))
    orthogonal_rows(t, 0, 3)
    orthogonal_rows(t, 3, 6)
    gram = t.detach() @ t.detach().t()
    assert torch.allclose(gram, torch.eye(6), atol=1e-5)


CASES = [("l2p", ()), ("dualprompt", ()), ("coda_prompt", ("strategy.pool_size=10",)),
         ("lae", ()), ("lae", ("strategy.pet=prefix",))]


@pytest.mark.slow
@pytest.mark.parametrize("name,extra", CASES, ids=["l2p", "dualprompt", "coda_prompt", "lae_adapter", "lae_prefix"])
def test_strategy_end_to_end_trains_only_prompts_and_head(name, extra, tmp_path):
    cfg = config(name, tmp_path, *extra, "strategy.freeze_epochs=0" if name == "lae" else "seed=0")
    initial = build(cfg).strategy                       # same seed: the model and prompts run() starts from
    start = {k: v.clone() for k, v in initial.state_dict()["model"].items()}
    start_extra = initial.extra_state()
    results = run(cfg, str(tmp_path / name))
    assert results["status"] == "complete" and len(results["accuracy_matrix"]) == 2
    final = io.torch_load(os.path.join(tmp_path, name, CHECKPOINT))["strategy"]
    for k, v in final["model"].items():
        if k.startswith("head."):
            assert not torch.equal(v, start[k]), f"head {k} did not train"
        else:
            assert torch.equal(v, start[k]), f"backbone parameter {k} changed"
    key = {"l2p": "pool", "dualprompt": "prompts", "coda_prompt": "prompts", "lae": "online"}[name]
    changed = [k for k, v in final["extra"][key].items() if not torch.equal(v, start_extra[key][k])]
    assert changed, f"no {key} parameter changed"


def test_dualprompt_trains_only_the_task_e_prompt(tmp_path):
    built = build(config("dualprompt", tmp_path))
    scenario, s = built.scenario, built.strategy
    exp = scenario.experiences[0]
    before = s.prompts.e.prompts.detach().clone()
    s.before_experience(exp)
    for batch in s.train_data(exp).batches(8):
        s.train_step(batch)
    after = s.prompts.e.prompts.detach()
    assert not torch.equal(after[0], before[0])
    assert torch.equal(after[1:], before[1:])


def test_coda_new_components_orthogonal_and_old_frozen(tmp_path):
    built = build(config("coda_prompt", tmp_path, "strategy.pool_size=10"))
    scenario, s = built.scenario, built.strategy
    e0, e1 = scenario.experiences
    s.before_experience(e0)
    for batch in s.train_data(e0).batches(8):
        s.train_step(batch)
    s.after_experience(e0)
    old = {k: v.detach().clone() for k, v in s.prompts.items()}
    s.before_experience(e1)
    K = s.prompts["K"].detach()
    assert torch.allclose(K[:, :5], old["K"][:, :5])                    # old components kept
    cross = torch.einsum("lmd,lnd->lmn", K[:, 5:], K[:, :5])
    assert cross.abs().max() < 1e-4                                       # new ones orthogonal to old
    for batch in s.train_data(e1).batches(8):
        s.train_step(batch)
    for k in ("K", "A", "P"):
        assert torch.equal(s.prompts[k].detach()[:, :5], old[k][:, :5])   # frozen while learning task 2
        assert not torch.equal(s.prompts[k].detach()[:, 5:], old[k][:, 5:])  # the new task's ones train


def test_lae_offline_is_ema_of_online(tmp_path):
    built = build(config("lae", tmp_path, "strategy.ema_decay=0.9", "strategy.freeze_epochs=0"))
    scenario, s = built.scenario, built.strategy
    e0, e1 = scenario.experiences
    s.before_experience(e0)
    assert s.offline is None                                              # no offline expert in task 1
    s.after_experience(e0)
    s.before_experience(e1)
    assert all(torch.equal(a, b) for a, b in zip(s.offline.state_dict().values(), s.online.state_dict().values()))
    batch = next(s.train_data(e1).batches(8))
    off = [v.clone() for v in s.offline.state_dict().values()]
    s.train_step(batch)
    on = list(s.online.state_dict().values())
    for o, n, new in zip(off, on, s.offline.state_dict().values()):
        assert torch.allclose(new, 0.9 * o + 0.1 * n, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(off, on))            # the online module moved
    # ensemble = max of the two experts' softmax
    x = batch.x
    p_on = s.mask_unseen(s.forward(s.normalize(x), s.online)).softmax(1)
    p_off = s.mask_unseen(s.forward(s.normalize(x), s.offline)).softmax(1)
    assert torch.allclose(s.predict(x).exp(), torch.maximum(p_on, p_off), atol=1e-5)
    unseen = sorted(set(range(4)) - s.seen)
    assert s.seen == set(batch.y.tolist()) and (s.predict(x).exp()[:, unseen] < 1e-20).all()  # untrained classes masked


def test_lae_freezes_pet_in_calibration_epochs(tmp_path):
    built = build(config("lae", tmp_path, "strategy.freeze_epochs=1"))
    scenario, s = built.scenario, built.strategy
    e0, e1 = scenario.experiences
    s.after_experience(e0)                                                # now in task 2
    s.before_experience(e1)
    before = [p.detach().clone() for p in s.online.parameters()]
    head = s.vit.head.weight.detach().clone()
    for batch in s.train_data(e1).batches(8):                            # one epoch: PET frozen
        s.train_step(batch)
    assert all(torch.equal(a, p) for a, p in zip(before, s.online.parameters()))
    assert not torch.equal(head, s.vit.head.weight)


def test_non_vit_model_is_a_config_error(tmp_path):
    from cl.errors import ConfigError
    cfg = load_config(None, ["scenario.name=class_split", "strategy.name=l2p", "model.name=mlp", "device=cpu"])
    with pytest.raises(ConfigError, match="VisionTransformer"):
        build(cfg)


def test_split_model_returns_vit_and_indexed_data():
    _, vit = split_model(tiny_vit())
    assert len(vit.blocks) == 5
    data = indexed(TensorData(torch.zeros(3, 1), torch.tensor([2, 0, 1])))
    assert data.g.tolist() == [0, 1, 2] and data.y.tolist() == [2, 0, 1]


def test_class_split_classes_subset_and_dataset_args():
    from omegaconf import OmegaConf
    from cl.errors import ConfigError
    from cl.registry import SCENARIOS
    cfg = load_config(None, ["scenario.name=class_split", "scenario.dataset=synthetic", "strategy.name=finetune",
                             "scenario.dataset_args.shape=[3,32,32]", "scenario.dataset_args.n_train=4",
                             "scenario.classes=[5,6,7,8,9]", "scenario.n_experiences=2", "scenario.first_classes=3"])
    s = SCENARIOS.get("class_split")(OmegaConf.to_object(cfg.scenario))
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert [e.classes for e in s.experiences] == [[5, 6, 7], [8, 9]]
    assert set(s.experiences[1].train.y.tolist()) == {8, 9} and len(s.experiences[0].train) == 12
    bad = load_config(None, ["scenario.name=class_split", "scenario.dataset=synthetic", "strategy.name=finetune",
                             "scenario.dataset_args.colour=1"])
    with pytest.raises(ConfigError, match="dataset_args"):
        SCENARIOS.get("class_split")(OmegaConf.to_object(bad.scenario))


def test_dualprompt_copies_e_prompt_of_the_previous_task(tmp_path):
    """shared_prompt_pool (dualprompt-pytorch engine.py): before task t, E-prompt t-1 is copied into t;
    its key is not (shared_prompt_key false in both configs); a fresh optimizer follows."""
    built = build(config("dualprompt", tmp_path))
    s, (e0, e1) = built.strategy, built.scenario.experiences
    s.before_experience(e0)
    for batch in s.train_data(e0).batches(8):
        s.train_step(batch)
    s.after_experience(e0)
    prompts, keys = s.prompts.e.prompts.detach().clone(), s.prompts.e.keys.detach().clone()
    assert not torch.equal(prompts[1], prompts[0])
    s.before_experience(e1)
    after = s.prompts.e.prompts.detach()
    assert torch.equal(after[1], prompts[0])                         # task 1 starts from task 0's prompt
    assert torch.equal(after[0], prompts[0]) and torch.equal(after[2:], prompts[2:])
    assert torch.equal(s.prompts.e.keys.detach(), keys)             # keys untouched
    assert not s.optimizer.state                                      # fresh optimizer after the copy
    for batch in s.train_data(e1).batches(8):                         # task 1 trains its copy, not prompt 0
        s.train_step(batch)
    assert torch.equal(s.prompts.e.prompts.detach()[0], prompts[0])
    assert not torch.equal(s.prompts.e.prompts.detach()[1], prompts[0])


@pytest.mark.parametrize("flags,prompt_copied,key_copied", [
    (("strategy.shared_prompt_pool=false",), False, False),
    (("strategy.shared_prompt_key=true",), True, True)])
def test_dualprompt_transfer_flags(flags, prompt_copied, key_copied, tmp_path):
    s = build(config("dualprompt", tmp_path, *flags)).strategy
    s.task = 3                                                        # as after three tasks
    prompts, keys = s.prompts.e.prompts.detach().clone(), s.prompts.e.keys.detach().clone()
    s.transfer_prompt()
    assert torch.equal(s.prompts.e.prompts.detach()[3], prompts[2] if prompt_copied else prompts[3])
    assert torch.equal(s.prompts.e.keys.detach()[3], keys[2] if key_copied else keys[3])
    assert torch.equal(s.prompts.e.prompts.detach()[4:], prompts[4:])


@pytest.mark.parametrize("name,size", [("l2p", 16), ("dualprompt", 24)])
def test_batchwise_vote_at_evaluation_spans_the_authors_test_batch(name, size, tmp_path, monkeypatch):
    """The authors evaluate in batches of the training size (16 / 24) with batch-wise selection on:
    the majority vote must not span a whole task's test set (the old default was 256)."""
    from cl.runner import evaluate
    built = build(config(name, tmp_path, "scenario.dataset_args.n_test=20"))   # 40 test images per task
    s = built.strategy
    pool = s.pool if name == "l2p" else s.prompts.e
    voted = []
    real = pool.select

    def spy(query, top_k, batchwise=False):
        voted.append((len(query), batchwise))
        return real(query, top_k, batchwise)

    monkeypatch.setattr(pool, "select", spy)
    evaluate(s, built.tasks[0], "cpu")
    assert voted and all(b for _, b in voted)                         # the authors' vote, at evaluation too
    assert max(n for n, _ in voted) == size and sum(n for n, _ in voted) == 40


def test_coda_cosine_schedule_hand_values(tmp_path):
    """CosineSchedule (utils/schedulers.py), stepped per epoch: lr * cos(99 pi e / (200 (E - 1)))."""
    built = build(config("coda_prompt", tmp_path, "strategy.pool_size=10", "strategy.epochs=3"))
    s, e0 = built.strategy, built.scenario.experiences[0]
    s.before_experience(e0)
    data = s.train_data(e0)                                           # 16 images: 2 batches per epoch
    lrs = []
    for _ in range(3):
        for batch in data.batches(8):
            s.train_step(batch)
            lrs.append(s.optimizer.param_groups[0]["lr"])
    # hand values: cos(0) = 1, cos(99 pi / 400) = 0.7126385, cos(99 pi / 200) = sin(pi / 200) = 0.01570732
    assert lrs == pytest.approx([1e-3, 1e-3, 7.126385e-4, 7.126385e-4, 1.570732e-5, 1.570732e-5], rel=1e-6)


def test_coda_infers_task_starts_from_new_labels_when_boundaries_are_hidden(tmp_path):
    from cl.data import Batch
    s = build(config("coda_prompt", tmp_path, "strategy.pool_size=10", "hide_boundaries=true")).strategy
    assert not s.needs_boundaries and (s.prompts["K"] == 0).all()
    x = torch.rand(4, 3, 32, 32)
    s.train_step(Batch(x, torch.tensor([0, 0, 1, 1])))               # first batch: task 0 starts
    assert (s.task, s.begun, s.classes) == (0, 0, [0, 1])
    assert (s.prompts["K"][:, :5] != 0).all(dim=-1).all() and (s.prompts["K"][:, 5:] == 0).all()
    opt = s.optimizer
    s.train_step(Batch(x, torch.tensor([1, 2, 1, 2])))               # a new label with known ones: same task
    assert (s.task, s.begun, s.classes, s.optimizer) == (0, 0, [0, 1, 2], opt)
    s.train_step(Batch(x, torch.tensor([3, 3, 3, 3])))               # only new labels: task 1 starts
    assert (s.task, s.begun, s.classes, s.step) == (1, 1, [3], 1) and s.optimizer is not opt
    K = s.prompts["K"].detach()
    assert (K[:, 5:] != 0).all(dim=-1).all()
    assert torch.einsum("lmd,lnd->lmn", K[:, 5:], K[:, :5]).abs().max() < 1e-4   # orthogonal to task 0's


def test_coda_hidden_boundaries_reproduce_the_visible_run(tmp_path):
    """On a class-incremental stream with disjoint tasks, inferring the task starts from new labels
    gives the visible-boundary run exactly (the old code left K, A, P at 0 with hidden boundaries)."""
    visible = run(config("coda_prompt", tmp_path, "strategy.pool_size=10"), str(tmp_path / "visible"))
    hidden = run(config("coda_prompt", tmp_path, "strategy.pool_size=10", "hide_boundaries=true"), str(tmp_path / "hidden"))
    assert hidden["boundaries_visible"] is False
    assert hidden["accuracy_matrix"] == visible["accuracy_matrix"]
    pv = io.torch_load(os.path.join(tmp_path, "visible", CHECKPOINT))["strategy"]["extra"]["prompts"]
    ph = io.torch_load(os.path.join(tmp_path, "hidden", CHECKPOINT))["strategy"]["extra"]["prompts"]
    for k in ("K", "A", "P"):
        assert torch.equal(ph[k], pv[k])
        assert (ph[k][:, :10].flatten(2) != 0).any(-1).all()          # both tasks' components exist


def test_coda_hidden_boundaries_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """The inferred task (index, step, classes) is checkpointed: a crash after experience 1 and
    --resume give the uninterrupted hidden-boundary run."""
    from cl import faults
    args = ("strategy.pool_size=10", "hide_boundaries=true")
    full = run(config("coda_prompt", tmp_path, *args), str(tmp_path / "full"))
    real_hit = faults.hit

    def crash(point):
        if point == "experience":
            raise KeyboardInterrupt
        real_hit(point)

    monkeypatch.setattr(faults, "hit", crash)
    with pytest.raises(KeyboardInterrupt):
        run(config("coda_prompt", tmp_path, *args), str(tmp_path / "crashed"))
    monkeypatch.setattr(faults, "hit", real_hit)
    resumed = run(config("coda_prompt", tmp_path, *args), str(tmp_path / "crashed"), resume=True)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
