"""LAE with the LoRA PET module (strategies/_pet.py LoRA, strategies/lae.py pet=lora) on a tiny random-init ViT."""
import pytest
import torch

import test_prompts
from cl.errors import ConfigError
from strategies._pet import LoRA
from strategies._prompts import attention, vit_tokens
from cl.runner import build
from test_prompts import config, tiny_vit


def lae_lora(tmp_path, *extra):
    """(scenario, strategy) of a built LAE-LoRA run."""
    r = build(config("lae", tmp_path, "strategy.pet=lora", *extra))
    return r.scenario, r.strategy


def randomize(lora, seed=0):
    """Give a LoRA module a non-zero update (B random) so that its effect can be seen."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lora.B.copy_(torch.randn(lora.B.shape, generator=g))


def test_lora_update_is_zero_at_init_and_output_is_the_frozen_backbone(tmp_path):
    lora = LoRA(32, rank=5)
    assert lora.A.shape == (2, 5, 32) and lora.B.shape == (2, 32, 5)
    assert torch.count_nonzero(lora.B) == 0 and lora.A.abs().min() > 0
    assert lora.A.abs().max() <= 1 / 32 ** 0.5                 # nn.Linear(32, 5)-style Kaiming-uniform bound
    assert torch.count_nonzero(lora.delta()) == 0
    vit = tiny_vit().eval()
    x = torch.rand(2, 3, 32, 32)
    loras = {i: LoRA(32) for i in range(5)}
    assert torch.allclose(vit_tokens(vit, x, loras=loras), vit.forward_features(x), atol=1e-6)
    # the strategy's online expert at init gives the frozen network's logits
    _, s = lae_lora(tmp_path)
    s.vit.eval()
    xn = s.normalize(x)
    with torch.no_grad():
        assert torch.allclose(s.forward(xn, s.online), s.vit.forward_head(s.vit.forward_features(xn)), atol=1e-6)


def test_lora_updates_only_key_and_value_projections():
    vit = tiny_vit().eval()
    qkv = vit.blocks[0].attn.qkv
    lora = LoRA(32, rank=3)
    randomize(lora)
    with torch.no_grad():
        lora.k_scale.scale.fill_(0.5)
        lora.v_scale.scale.fill_(2.0)
    h = torch.randn(2, 7, 32)
    out = lora(qkv, h).detach()
    plain = qkv(h).detach()
    A, B = lora.A.detach(), lora.B.detach()
    assert torch.allclose(out[..., :32], plain[..., :32], atol=1e-6)                            # query untouched
    assert torch.allclose(out[..., 32:64], plain[..., 32:64] + 0.5 * h @ A[0].t() @ B[0].t(), atol=1e-5)
    assert torch.allclose(out[..., 64:], plain[..., 64:] + 2.0 * h @ A[1].t() @ B[1].t(), atol=1e-5)


def test_lora_changes_attention_only_in_chosen_blocks(tmp_path):
    _, s = lae_lora(tmp_path, "strategy.layers=[1,3]")
    for i, m in enumerate(s.online):
        randomize(m, i)
    vit = s.vit.eval()
    x = s.normalize(torch.rand(2, 3, 32, 32))
    trace = []
    with torch.no_grad():
        tokens = vit_tokens(vit, x, loras=dict(zip(s.cfg.layers, s.online)), trace=trace)
        t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for i, blk in enumerate(vit.blocks):                 # rebuild each block's input from the trace
            plain = attention(blk.attn, blk.norm1(t))
            if i in (1, 3):
                assert not torch.allclose(trace[i], plain, atol=1e-3), f"block {i}: LoRA had no effect"
            else:
                assert torch.allclose(trace[i], plain, atol=1e-5), f"block {i} changed without LoRA"
            t = t + blk.ls1(trace[i])
            t = t + blk.ls2(blk.mlp(blk.norm2(t)))
        assert torch.allclose(vit.norm(t), tokens, atol=1e-5)


def test_lora_trains_lora_and_head_only(tmp_path):
    scenario, s = lae_lora(tmp_path, "strategy.freeze_epochs=0")
    backbone = {k: v.clone() for k, v in s.vit.state_dict().items()}
    online = {k: v.clone() for k, v in s.online.state_dict().items()}
    for exp in scenario.experiences:
        s.before_experience(exp)
        for batch in s.train_data(exp).batches(8):
            s.train_step(batch)
        s.after_experience(exp)
    for k, v in s.vit.state_dict().items():
        if k.startswith("head."):
            assert not torch.equal(v, backbone[k]), f"head {k} did not train"
        else:
            assert torch.equal(v, backbone[k]), f"backbone parameter {k} changed"
    for k, v in s.online.state_dict().items():                # every A, B and scale of every block moved
        assert not torch.equal(v, online[k]), f"LoRA parameter {k} did not train"
    assert sorted(online) == sorted(f"{i}.{n}" for i in range(5) for n in ("A", "B", "k_scale.scale", "v_scale.scale"))


def test_lora_offline_is_ema_of_online(tmp_path):
    scenario, s = lae_lora(tmp_path, "strategy.ema_decay=0.9", "strategy.freeze_epochs=0")
    e0, e1 = scenario.experiences
    s.before_experience(e0)
    for batch in s.train_data(e0).batches(8):
        s.train_step(batch)
    s.after_experience(e0)
    s.before_experience(e1)
    assert all(torch.equal(a, b) for a, b in zip(s.offline.state_dict().values(), s.online.state_dict().values()))
    off = {k: v.clone() for k, v in s.offline.state_dict().items()}
    s.train_step(next(s.train_data(e1).batches(8)))
    on = s.online.state_dict()
    for k, new in s.offline.state_dict().items():            # theta_off <- m theta_off + (1 - m) theta_on
        assert torch.allclose(new, 0.9 * off[k] + 0.1 * on[k], atol=1e-6), k
    assert not torch.equal(on["0.B"], off["0.B"]) and not torch.equal(on["0.A"], off["0.A"])
    assert all(not p.requires_grad for p in s.offline.parameters())


@pytest.mark.parametrize("extra,match", [(("strategy.pet=lorra",), "lora"), (("strategy.pet=lora", "strategy.lora_rank=0"), "lora_rank"),
                                         (("strategy.pet=lora", "strategy.layers=[7]"), "layers")])
def test_lae_bad_pet_config_is_a_config_error(extra, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        build(config("lae", tmp_path, *extra))


@pytest.mark.slow
def test_lora_end_to_end_run_trains_only_lora_and_head(tmp_path):
    test_prompts.test_strategy_end_to_end_trains_only_prompts_and_head("lae", ("strategy.pet=lora",), tmp_path)
