"""The GPT model (sizes, causality, tied weights, vocabulary checks) and Hugging Face causal LMs
built from a tiny config and reloaded from a folder the test writes (no download)."""
import pytest
import torch

from cl.config import ModelConfig
from cl.errors import CheckpointError, ConfigError
from cl.models import build_model
from cl.models.gpt import SIZES, gpt


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("size", ["test", "nano"])
def test_gpt_shapes_sizes_and_causality(size):
    torch.manual_seed(0)
    m = gpt(256, (32,), size=size).eval()
    x = torch.randint(0, 256, (2, 32))
    out = m(x)
    assert out.shape == (2, 32, 256)
    assert m.head.weight is m.tok_emb.weight                        # tied
    L, E, H = SIZES[size]
    assert len(m.blocks) == L and m.tok_emb.embedding_dim == E
    if size == "nano":
        assert 0.5e6 < n_params(m) < 1.5e6                         # the ~1M CPU model
    x2 = x.clone()
    x2[:, 20:] = (x2[:, 20:] + 1) % 256                             # change the future ...
    out2 = m(x2)
    assert torch.allclose(out[:, :20], out2[:, :20], atol=1e-5)     # ... the past's predictions do not move
    assert not torch.allclose(out[:, 20:], out2[:, 20:])


def gpt_params(vocab, context, n_layer, n_embd):
    """Parameters of the GPT layout: embeddings (head tied) + blocks (qkv, proj, MLP, 2 LayerNorms) + final LN."""
    return vocab * n_embd + context * n_embd + n_layer * (12 * n_embd ** 2 + 13 * n_embd) + 2 * n_embd


def test_gpt_small_is_gpt2_small_shaped():
    L, E, _ = SIZES["test"]
    assert n_params(gpt(300, (24,), size="test")) == gpt_params(300, 24, L, E)    # the formula is the model's
    L, E, H = SIZES["small"]
    assert (L, E, H) == (12, 768, 12) and gpt_params(50257, 1024, L, E) == 124_439_808   # GPT-2 small: 124M


def test_gpt_vocabulary_and_context_errors(tmp_path):
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        gpt(4096, (16,), size="test", vocab_size=256)
    assert gpt(250, (16,), size="test", vocab_size=256).head.out_features == 256   # padding is fine
    with pytest.raises(ConfigError, match="token windows"):
        gpt(10, (3, 8, 8), size="test")
    with pytest.raises(ConfigError, match="unknown size"):
        gpt(256, (16,), size="huge")
    with pytest.raises(ValueError, match="longer than the model's context"):
        gpt(256, (16,), size="test")(torch.zeros(1, 17, dtype=torch.long))
    path = tmp_path / "byte.pt"
    torch.save(gpt(256, (16,), size="test").state_dict(), path)
    with pytest.raises(CheckpointError, match="tokenizer"):        # a checkpoint of another vocabulary
        build_model(ModelConfig(name="gpt", args={"size": "test"}, checkpoint=str(path)), 4096, (16,))


def test_hf_causal_lm_from_config_and_from_a_saved_folder(tmp_path):
    pytest.importorskip("transformers")
    from cl.models.hf_lm import hf_causal_lm
    cfg = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 300, "n_positions": 32,
           "bos_token_id": 0, "eos_token_id": 0}
    torch.manual_seed(0)
    m = hf_causal_lm(300, (16,), config=cfg).eval()
    x = torch.randint(0, 300, (2, 16))
    assert m(x).shape == (2, 16, 300) and not m.loaded_pretrained
    m.lm.save_pretrained(str(tmp_path / "tiny"))
    loaded = build_model(ModelConfig(name="hf_causal_lm", args={"name_or_path": str(tmp_path / "tiny")}), 300, (16,))
    assert loaded.loaded_pretrained and torch.allclose(loaded.eval()(x), m(x), atol=1e-5)
    with pytest.raises(ConfigError, match="tokenizer has 400"):
        hf_causal_lm(400, (16,), name_or_path=str(tmp_path / "tiny"))
    with pytest.raises(ConfigError, match="at most 32 positions"):
        hf_causal_lm(300, (64,), config=cfg)
    with pytest.raises(ConfigError, match="exactly one"):
        hf_causal_lm(300, (16,))


def test_hf_unknown_name_offline_says_it_needs_a_download(monkeypatch):
    pytest.importorskip("transformers")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from cl.models.hf_lm import hf_causal_lm
    with pytest.raises(ConfigError, match="needs a download"):
        hf_causal_lm(300, (16,), name_or_path="nobody-here/no-such-model")
