"""GTTA's AdaIN style-transfer variant (``strategy.style_transfer=true``; ``strategies/_adain.py``).

A tiny random VGG encoder and decoder (narrow channels; 16x16 images) are saved to a temporary
folder and loaded as a user's checkpoints would be. The side-by-side equality with the authors'
TransferNet is ``benchmarks/tta_reference.py --check --method gtta_style,gtta_style_pretrain``.
"""
import argparse
import copy

import pytest
import torch

from cl.data import TensorData
from cl.errors import ConfigError
from cl.registry import MODELS, STRATEGIES, load_builtins
from cl.strategy import StreamInfo
from strategies._adain import EPS, adain, make_decoder, make_encoder

load_builtins()

WIDTHS = (4, 8, 8, 16)     # VGG's 64/128/256/512, narrowed


@pytest.fixture
def ckpts(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        vgg, dec = make_encoder(WIDTHS).state_dict(), make_decoder(WIDTHS).state_dict()
    for k in vgg:                          # keep a narrow random encoder's ReLUs alive
        if k.endswith("bias"):
            vgg[k] = vgg[k].abs() + 0.05
    vgg["22.weight"] = torch.zeros(16, 16, 3, 3)          # a later VGG layer: present in real files, ignored
    torch.save(vgg, tmp_path / "vgg_normalized.pth")
    torch.save({"decoder": dec}, tmp_path / "decoder.pth")
    return tmp_path


def source_data(n=48, size=16):
    g = torch.Generator().manual_seed(0)
    return TensorData((torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8),
                      torch.randint(0, 4, (n,), generator=g))


def adapt_batches(k=3, bs=16):
    return list(torch.rand(k, bs, 3, 16, 16, generator=torch.Generator().manual_seed(1)))


def make(ckpts, source=None, **overrides):
    source = source if source is not None else source_data()
    kw = {"style_transfer": True, "vgg_checkpoint": str(ckpts / "vgg_normalized.pth"),
          "decoder_checkpoint": str(ckpts / "decoder.pth"), "batch_size": 16, "lr": 0.01, **overrides}
    torch.manual_seed(0)
    model = MODELS.get("small_cnn")(num_classes=4, input_shape=tuple(source.x.shape[1:]), width=4)
    cfg = STRATEGIES.config_of("gtta")(**kw)
    s = STRATEGIES.get("gtta")(model, cfg, stream=StreamInfo(num_classes=4))
    s.setup(source=source)
    return s


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_style_path_trains_decoder_and_model_not_encoder(ckpts):
    s = make(ckpts)
    enc, dec, model = params(s.style.encoder), params(s.style.decoder), params(s.model)
    for x in adapt_batches():
        out = s.adapt(x)
        assert out.shape == (16, 4) and torch.isfinite(out).all()
    assert all(torch.equal(a, b) for a, b in zip(enc, s.style.encoder.parameters()))
    assert all(not p.requires_grad for p in s.style.encoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(dec, s.style.decoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(model, s.model.parameters()))
    # per batch: one decoder step (steps_adain 1) and one source step, each on a new source batch
    assert s.source.pos == 6 and s.updates == 6
    assert s.style_optimizer.state_dict()["state"][0]["step"] == 3
    # the decoder is not among the classifier's trained parameters
    trained = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert not trained & {id(p) for p in s.style.parameters()}


def test_source_step_sees_source_images_in_the_test_style(ckpts):
    s = make(ckpts, steps_adain=1)
    x = adapt_batches(1)[0]
    seen = []
    s.style.transfer = (lambda f: lambda *a, **k: seen.append((a, k)) or f(*a, **k))(s.style.transfer)
    s.adapt(x)
    (train_args, train_kw), (src_args, src_kw) = seen
    assert train_kw == {"with_loss": True} and src_kw == {}
    # source image i takes the style of the (i+1)-th newest test image, in both layers
    assert torch.equal(src_args[2], -torch.arange(1, 17)) and torch.equal(src_args[3], src_args[2])
    newest = s.style.style_of(x)
    assert torch.allclose(s.styles.pick(1, src_args[2])[0], newest[1][0].flip(0))


def test_style_buffer_fills_and_is_capped(ckpts):
    s = make(ckpts, moments_buffer_size=20)
    x1, x2 = adapt_batches(2)
    s.adapt(x1)
    assert len(s.styles) == 16
    s.adapt(x2)
    assert len(s.styles) == 20                           # capped: the newest 20 styles
    shallow, deep = s.style.style_of(x2)
    assert s.styles.layers[0][0].shape == (20, WIDTHS[0]) and s.styles.layers[1][1].shape == (20, WIDTHS[3])
    assert torch.allclose(s.styles.layers[1][0][4:], deep[0]) and torch.allclose(s.styles.layers[0][1][4:], shallow[1])
    assert torch.allclose(s.styles.layers[1][0][:4], s.style.style_of(x1[12:])[1][0])
    dec0 = params(s.style.decoder)
    s.reset()                                             # decoder back to its loaded weights, buffer empty
    assert len(s.styles) == 0
    loaded = torch.load(ckpts / "decoder.pth", weights_only=True)["decoder"]
    assert all(torch.equal(p, loaded[k]) for k, p in s.style.decoder.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(dec0, s.style.decoder.parameters()))
    assert s.style_optimizer.state_dict()["state"][0]["step"] == 2    # the decoder's Adam state goes on


def test_adain_matches_the_style_statistics():
    f = torch.randn(3, 5, 6, 6) * 4 + 2
    mean, std = torch.randn(3, 5), torch.rand(3, 5) + 0.5
    out = adain(f, mean, std)
    assert torch.allclose(out.mean(dim=(2, 3)), mean, atol=1e-5)
    f_std = f.std(dim=(2, 3))
    assert torch.allclose(out.std(dim=(2, 3)), std * f_std / (f_std + EPS), atol=1e-5)


def test_resume_continues_identically(ckpts):
    xs = adapt_batches()
    a = make(ckpts)
    for x in xs[:2]:
        a.adapt(x)
    b = make(ckpts)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(a.adapt(xs[2]), b.adapt(xs[2]))
    assert all(torch.equal(p, q) for p, q in zip(a.style.decoder.parameters(), b.style.decoder.parameters()))


def test_decoder_is_pretrained_on_the_source_when_missing(ckpts):
    path = ckpts / "new" / "decoder.pth"
    s = make(ckpts, decoder_checkpoint=str(path), pretrain_steps_adain=3)
    assert path.is_file()
    saved = torch.load(path, weights_only=True)["decoder"]
    assert all(torch.equal(p, saved[k]) for k, p in s.style.decoder.state_dict().items())
    given = torch.load(ckpts / "decoder.pth", weights_only=True)["decoder"]
    assert s.source.pos == 0                               # the replay stream is untouched by pre-training
    # a second run loads the file instead of pre-training again (same weights, no source read)
    t = make(ckpts, decoder_checkpoint=str(path), pretrain_steps_adain=3)
    assert all(torch.equal(p, saved[k]) for k, p in t.style.decoder.state_dict().items())
    assert given.keys() == saved.keys()
    t.adapt(adapt_batches(1)[0])


@pytest.mark.parametrize("case", ["no_vgg_option", "missing_vgg", "empty_vgg", "code_vgg", "wrong_decoder",
                                  "missing_decoder_no_pretrain", "small_images"])
def test_bad_style_settings_are_config_errors(ckpts, case):
    over, match, source = {}, None, None
    if case == "no_vgg_option":
        over, match = {"vgg_checkpoint": ""}, "strategy.vgg_checkpoint"
    elif case == "missing_vgg":
        over, match = {"vgg_checkpoint": str(ckpts / "nope.pth")}, "strategy.vgg_checkpoint.*not found"
    elif case == "empty_vgg":
        (ckpts / "empty.pth").write_bytes(b"")
        over, match = {"vgg_checkpoint": str(ckpts / "empty.pth")}, "strategy.vgg_checkpoint.*empty"
    elif case == "code_vgg":
        torch.save({"1.weight": torch.zeros(1), "obj": argparse.Namespace(a=1)}, ckpts / "code.pth")
        over, match = {"vgg_checkpoint": str(ckpts / "code.pth")}, "strategy.vgg_checkpoint.*refused"
    elif case == "wrong_decoder":
        with torch.random.fork_rng(devices=[]):
            torch.save({"decoder": make_decoder((4, 8, 8, 32)).state_dict()}, ckpts / "wide.pth")
        over, match = {"decoder_checkpoint": str(ckpts / "wide.pth")}, "strategy.decoder_checkpoint.*wrong shapes"
    elif case == "missing_decoder_no_pretrain":
        over = {"decoder_checkpoint": str(ckpts / "nope.pth"), "pretrain_steps_adain": 0}
        match = "strategy.pretrain_steps_adain"
    elif case == "small_images":
        source, match = source_data(size=8), "multiples of 8 and at least 16"
    with pytest.raises(ConfigError, match=match) as e:
        make(ckpts, source=source, **over)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_mixup_variant_builds_no_style_network():
    s = STRATEGIES.get("gtta")(MODELS.get("small_cnn")(num_classes=4, input_shape=(3, 16, 16), width=4),
                               STRATEGIES.config_of("gtta")(batch_size=16), stream=StreamInfo(num_classes=4))
    s.setup(source=source_data())
    assert s.style is None and "style" not in s.extra_state()
