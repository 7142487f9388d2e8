"""CLIP through open_clip (cl/models/clip.py) on a tiny random CLIP built from an open_clip config:
nothing is downloaded. Checks the zero-shot head against a hand computation, open_clip's tokenizer,
the learned-context path (TPT/CoOp), safe local weights and the errors."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from cl.config import ModelConfig  # noqa: E402
from cl.errors import ConfigError  # noqa: E402
from cl.models import build_model  # noqa: E402
from cl.models.clip import CLIPClassifier, clip_of  # noqa: E402

TINY = "cl-test-tiny-clip"
NAMES = ["cat", "dog", "sports car"]
TEMPLATES = [["a photo of a {}.", "a drawing of a {}."], ["a photo of a {}."], ["a photo of a {}.", "my {}!"]]


def tiny(**args):
    torch.manual_seed(0)
    cfg = ModelConfig(name="clip", args={"arch": TINY, **args})
    return build_model(cfg, len(NAMES), (3, 8, 8), class_names=NAMES, class_templates=TEMPLATES)


def test_head_is_mean_of_normalized_template_embeddings_and_logits_are_scaled_cosines():
    import open_clip
    m = tiny().eval()
    assert isinstance(m, CLIPClassifier) and clip_of(m, "test") is m
    tok = open_clip.get_tokenizer(TINY)
    with torch.no_grad():
        rows = []
        for name, temps in zip(NAMES, TEMPLATES):
            e = F.normalize(m.clip.encode_text(tok([t.format(name) for t in temps])), dim=-1)
            rows.append(F.normalize(e.mean(0), dim=0))
        head = torch.stack(rows)
        assert torch.allclose(m.head(), head, atol=1e-6)
        x = torch.rand(2, 3, 8, 8)
        img = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        img = (img - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / \
            torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        f = F.normalize(m.clip.encode_image(img), dim=-1)
        assert torch.allclose(m(x), m.clip.logit_scale.exp() * f @ head.t(), atol=1e-5)
        # the first template only (ZSCL trains with dataset.template)
        first = F.normalize(m.clip.encode_text(tok([t[0].format(n) for n, t in zip(NAMES, TEMPLATES)])), dim=-1)
        assert torch.allclose(m.class_embeddings([2, 0], template_index=0), first[[2, 0]], atol=1e-6)
    assert torch.equal(m.prompt_tokens[0], tok(["a photo of a cat."])[0])      # open_clip's tokenizer


def test_head_cache_follows_text_weight_changes_and_grad_mode():
    m = tiny().eval()
    with torch.no_grad():
        h0 = m.head().clone()
        assert m.head() is m.head()                                            # cached
        m.clip.visual.conv1.weight.add_(1.0)                                   # image side: head unchanged
        assert torch.equal(m.head(), h0)
        m.clip.text_projection.mul_(-1.0)                                      # text side: recomputed
        assert torch.allclose(m.head(), -h0, atol=1e-6)
    m.train()
    out = m(torch.rand(2, 3, 8, 8))
    out.sum().backward()                                                       # gradients reach the text tower
    assert m.clip.text_projection.grad is not None and m.clip.text_projection.grad.abs().sum() > 0


def test_learned_context_reproduces_the_template_prompt_then_trains():
    m = tiny(templates=["a photo of a {}."]).eval()
    with torch.no_grad():
        plain = m.head().clone()
    ctx = m.enable_context("a photo of a")
    assert ctx.shape == (4, 16) and [n for n, _ in m.named_parameters()][0] == "context"
    with torch.no_grad():
        assert torch.allclose(m.head(), plain, atol=1e-5)     # context = the init words' embeddings
    m.requires_grad_(False)
    ctx.requires_grad_(True)
    opt = torch.optim.SGD([ctx], lr=1.0)
    loss = m(torch.rand(2, 3, 8, 8)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(m.head(), plain, atol=1e-4)
    assert not torch.equal(ctx, m.context_init)


def test_local_weights_file_loads_safely(tmp_path):
    a, b = tiny(), None
    path = tmp_path / "w.pt"
    torch.save(a.clip.state_dict(), path)
    torch.manual_seed(123)
    b = build_model(ModelConfig(name="clip", args={"arch": TINY, "pretrained": str(path)}), 3, (3, 8, 8),
                    class_names=NAMES)
    assert b.loaded_pretrained
    for (k, p), q in zip(a.clip.state_dict().items(), b.clip.state_dict().values()):
        assert torch.equal(p, q), k


def test_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="class names"):
        build_model(ModelConfig(name="clip", args={"arch": TINY}), 3, (3, 8, 8))
    with pytest.raises(ConfigError, match="one name per label"):
        build_model(ModelConfig(name="clip", args={"arch": TINY}), 3, (3, 8, 8), class_names=["a", "b"])
    with pytest.raises(ConfigError, match="list_models"):
        build_model(ModelConfig(name="clip", args={"arch": "no-such-clip"}), 3, (3, 8, 8), class_names=NAMES)
    with pytest.raises(ConfigError, match="'\\{\\}'"):
        build_model(ModelConfig(name="clip", args={"arch": TINY, "templates": ["a photo"]}), 3, (3, 8, 8),
                    class_names=NAMES)
    with pytest.raises(ConfigError, match="needs a CLIP model"):
        clip_of(torch.nn.Linear(2, 2), "zscl")
