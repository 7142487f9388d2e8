"""TPT and DiffTPT on a tiny random CLIP and a tiny random diffusers pipeline: the selections on known
values, the averaged entropy, one tuning step against a hand AdamW step, episodic resets, and the
content-keyed, deterministic cache of diffusion views."""
import pytest
import torch

pytest.importorskip("open_clip")

from cl.config import load_config  # noqa: E402
from cl.errors import ConfigError  # noqa: E402
from cl.runner import build  # noqa: E402
from strategies._tpt_views import avg_entropy, select_confident, select_cosine_then_entropy, tpt_views  # noqa: E402

QUIET = ["logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false",
         "device=cpu"]
ONLINE = ["scenario.name=synthetic_shift", "scenario.n_per_class=2", "scenario.n_domains=1", "strategy.batch_size=4",
          "model.name=clip", "model.args.arch=cl-test-tiny-clip"]


def built(tmp_path, name, *extra):
    return build(load_config(None, [f"output_dir={tmp_path}", f"strategy.name={name}", *ONLINE, *QUIET, *extra]))


def test_entropy_selection_keeps_the_most_confident_rows():
    logits = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 1.0], [0.0, 9.0], [2.0, 2.0]])
    assert select_confident(logits, 0.4).tolist() == [3, 1]         # int(5 * 0.4) = 2 lowest entropies


def test_cosine_then_entropy_selection_on_known_values():
    orig = [4.0, 0.0, 0.0]
    views = [[1.0, 0.0, 0.0], [8.0, 0.0, 0.0], [3.0, 0.1, 0.0],      # close to the image's logits
             [0.0, 5.0, 0.0], [0.0, 0.0, 5.0],                      # far: dropped by the cosine filter
             [2.0, 0.5, 0.5], [6.0, 1.0, 0.0], [0.5, 0.1, 0.1], [1.0, 1.0, 0.0], [4.0, 0.0, 1.0]]
    logits = torch.tensor([orig] + views)
    idx = select_cosine_then_entropy(logits, 0.8, 0.3)
    cos = torch.nn.functional.cosine_similarity(logits[1:], logits[:1], dim=1)
    kept = set((torch.argsort(cos, descending=True)[:8] + 1).tolist())
    assert {4, 5} & kept == set()                                    # int(10 * 0.8) = 8 most similar
    pool = [0] + sorted(kept)
    ent = {i: float(-(logits[i].softmax(0) * logits[i].log_softmax(0)).sum()) for i in pool}
    expected = sorted(pool, key=lambda i: ent[i])[:int(9 * 0.3)]    # 2 lowest entropies of 9
    assert idx.tolist() == expected == [2, 7]


def test_avg_entropy_is_the_entropy_of_the_mean_prediction():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    p = logits.softmax(1).mean(0)
    assert avg_entropy(logits).item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)


def test_views_keep_shape_and_range():
    x = torch.rand(3, 16, 16)
    for mix in (False, True):
        v = tpt_views(x, 5, mix)
        assert v.shape == (5, 3, 16, 16) and float(v.min()) >= 0 and float(v.max()) <= 1
        assert not torch.allclose(v[0], x)


def test_one_tpt_step_is_adamw_on_the_averaged_entropy_and_only_the_context_moves(tmp_path):
    r = built(tmp_path, "tpt", "strategy.n_views=7", "strategy.selection=0.5")
    s = r.strategy
    clip = s.clip
    frozen = {k: p.detach().clone() for k, p in clip.clip.named_parameters()}
    x = next(r.scenario.experiences[0].test.batches(4)).x
    torch.manual_seed(3)
    views = s.views(x[0])
    assert views.shape[0] == 8 and torch.equal(views[0], x[0])
    s.reset_prompt()
    ctx0 = clip.context.detach().clone()
    logits = s.model(views)
    chosen = select_confident(logits.detach(), 0.5)
    (g,) = torch.autograd.grad(avg_entropy(logits[chosen]), clip.context)
    lr, wd, eps = 5e-3, 0.01, 1e-8
    expected = ctx0 * (1 - lr * wd) - lr * g / (g.abs() + eps)          # AdamW's first step
    s.tune(views)
    assert torch.allclose(clip.context, expected, atol=1e-6)
    for k, p in clip.clip.named_parameters():
        assert torch.equal(p, frozen[k]), k


def test_tpt_is_episodic(tmp_path):
    r = built(tmp_path, "tpt", "strategy.n_views=7", "strategy.steps=2", "strategy.selection=0.5")
    s = r.strategy
    x = next(r.scenario.experiences[0].test.batches(4)).x
    zero_shot = s.predict(x[:1])
    torch.manual_seed(0)
    a = s.forward_and_adapt(x[:1])
    tuned = s.clip.context.detach().clone()
    s.forward_and_adapt(x[1:2])                 # another image in between
    torch.manual_seed(0)
    b = s.forward_and_adapt(x[:1])
    assert torch.equal(a, b) and torch.equal(s.clip.context, tuned)   # the same start for every image
    assert not torch.equal(tuned, s.clip.context_init) and not torch.allclose(a, zero_shot)
    assert torch.equal(s.predict(x[:1]), zero_shot)                   # predict: the initial prompt, no side effect


def test_diffusion_views_are_deterministic_and_cached_by_content(tmp_path):
    pytest.importorskip("diffusers")
    from strategies._diffusion_views import DiffusionViews
    x = torch.rand(3, 8, 8)
    a = DiffusionViews("tiny-random", 3, num_inference_steps=1, cache_dir=str(tmp_path / "cache"))
    va = a.get(x)
    assert va.shape == (3, 3, 8, 8) and a.generated == 1
    assert torch.equal(a.get(x.clone()), va) and a.generated == 1          # memory hit
    both = a.get_many(torch.stack([torch.rand(3, 8, 8), x]))                  # batched with another image
    assert torch.equal(both[1], va) and a.generated == 2
    assert (tmp_path / "cache" / f"{DiffusionViews.key(x)}.pt").is_file()
    b = DiffusionViews("tiny-random", 3, num_inference_steps=1, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(b.get(x), va) and b.generated == 0 and b.pipe is None   # disk hit, no pipeline loaded
    c = DiffusionViews("tiny-random", 3, num_inference_steps=1)
    assert torch.equal(c.get(x), va)                                          # regenerated identically
    assert not torch.equal(c.get(torch.rand(3, 8, 8)), va) and c.generated == 2
    d = DiffusionViews("tiny-random", 3, num_inference_steps=1, chunk=2)      # generated in another batching
    assert torch.allclose(d.get_many(torch.stack([torch.rand(3, 8, 8), x]))[1], va, atol=2 / 255)


def test_difftpt_tunes_on_augmented_and_diffusion_views(tmp_path):
    pytest.importorskip("diffusers")
    r = built(tmp_path, "difftpt", "strategy.pipeline=tiny-random", "strategy.n_views=4", "strategy.diffusion_views=3",
              "strategy.num_inference_steps=1", "strategy.steps=2")
    s = r.strategy
    assert s.generator.pipe is not None                                       # loaded at set-up
    x = next(r.scenario.experiences[0].test.batches(4)).x
    v = s.views(x[0])
    assert v.shape[0] == 1 + 4 + 3 and torch.equal(v[5:], s.generator.get(x[0]))
    out = s.forward_and_adapt(x)
    assert out.shape == (4, 4) and not torch.equal(s.clip.context, s.clip.context_init)


def test_refusals(tmp_path):
    with pytest.raises(ConfigError, match="needs a CLIP model"):
        build(load_config(None, [f"output_dir={tmp_path}", "strategy.name=tpt", *ONLINE[:4], "model.name=mlp", *QUIET]))
    with pytest.raises(ConfigError, match="online"):
        build(load_config(None, [f"output_dir={tmp_path}", "strategy.name=tpt", "scenario.name=class_split",
                                 "scenario.dataset=synthetic", "model.name=clip", "model.args.arch=cl-test-tiny-clip",
                                 *QUIET]))
    with pytest.raises(ConfigError, match="diffusion pipeline"):
        built(tmp_path, "difftpt", f"strategy.pipeline={tmp_path / 'nowhere'}")
