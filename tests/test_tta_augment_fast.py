"""The fast CoTTA augmentation (strategies/_tta_augment.py) against torchvision's ops, bit for bit,
and CoTTA's skipped clean teacher pass."""
import pytest
import torch
import torchvision.transforms.functional as TF
from omegaconf import OmegaConf
from torchvision.transforms import InterpolationMode

from cl.registry import MODELS, SCENARIOS, STRATEGIES, load_builtins
from cl.strategy import StreamInfo
from strategies._tta_augment import ROID_VIEW, SOFT, CottaAugment, CottaAugmentParams, _adjust_hue, _uniform

load_builtins()


def torchvision_pipeline(x, size, p, generator=None):
    """The same random draws as CottaAugment, applied with torchvision's own functions at full size."""
    x = x.clamp(0.0, 1.0)
    for op in torch.randperm(5, generator=generator).tolist():
        if op == 0:
            x = TF.adjust_brightness(x, _uniform(*p.brightness, generator))
        elif op == 1:
            x = TF.adjust_contrast(x, _uniform(*p.contrast, generator))
        elif op == 2:
            x = TF.adjust_saturation(x, _uniform(*p.saturation, generator))
        elif op == 3:
            x = TF.adjust_hue(x, _uniform(*p.hue, generator))
        else:
            x = TF.adjust_gamma(x.clamp(1e-8, 1.0), _uniform(*p.gamma, generator))
    pad = size // 2
    x = TF.pad(x, [pad] * 4, padding_mode=p.padding_mode)
    angle = _uniform(*p.degrees, generator)
    max_dx, max_dy = p.translate * x.shape[-1], p.translate * x.shape[-2]
    tx = int(round(_uniform(-max_dx, max_dx, generator)))
    ty = int(round(_uniform(-max_dy, max_dy, generator)))
    scale = _uniform(*p.scale, generator)
    x = TF.affine(x, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                  interpolation=InterpolationMode.BILINEAR, fill=[0.0] * x.shape[1])
    if p.blur_and_noise:
        sigma = _uniform(*p.blur_sigma, generator)
        x = TF.gaussian_blur(x, [p.blur_kernel] * 2, [sigma, sigma])
    x = TF.center_crop(x, [size, size])
    if torch.rand(1, generator=generator) < p.flip_p:
        x = TF.hflip(x)
    if p.blur_and_noise:
        x = x + p.noise_std * torch.randn(x.shape, generator=generator)
    return x.clamp(0.0, 1.0)


@pytest.mark.parametrize("params", [CottaAugmentParams(), ROID_VIEW, SOFT], ids=["cotta", "roid", "soft"])
@pytest.mark.parametrize("size", [8, 32, 15])
def test_cotta_augment_is_torchvision_bit_for_bit(params, size):
    x = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(size))
    aug = CottaAugment(size, params)
    for seed in range(12):
        ours = aug(x, torch.Generator().manual_seed(seed))
        ref = torchvision_pipeline(x, size, params, torch.Generator().manual_seed(seed))
        assert torch.equal(ours, ref), f"seed {seed}: max difference {float((ours - ref).abs().max())}"


@pytest.mark.parametrize("batch", [1, 5, 200])
def test_cotta_augment_is_torchvision_bit_for_bit_in_float64_and_large_batches(batch):
    """float64 images (torchvision shifts the hue in float32 and blurs in float64) and the batch size of
    the benchmarks (the blur's channels-last convolution must sum like the NCHW one at any batch)."""
    for dtype in (torch.float64, torch.float32):
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch), dtype=dtype)
        aug = CottaAugment(32)
        for seed in range(4):
            ours = aug(x, torch.Generator().manual_seed(seed))
            ref = torchvision_pipeline(x, 32, CottaAugmentParams(), torch.Generator().manual_seed(seed))
            assert ours.dtype == dtype and ours.is_contiguous()
            assert torch.equal(ours, ref), f"{dtype} seed {seed}: max difference {float((ours - ref).abs().max())}"


def test_cotta_augment_global_rng_matches_too():
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(3)
    ours = CottaAugment(32)(x)
    torch.manual_seed(3)
    assert torch.equal(ours, torchvision_pipeline(x, 32, CottaAugmentParams()))


def test_adjust_hue_equals_torchvision_including_grey_and_edges():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 16, 16, generator=g)
    x[:, :, :3] = 0.25                       # grey pixels (max == min)
    x[:, 0, 3:5] = x[:, 1, 3:5]              # ties between channels
    x[:, :, 5, :2] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1)
    for hue in (-0.5, -0.06, -1e-4, 0.0, 0.03, 0.06, 0.5):
        assert torch.equal(_adjust_hue(x, hue), TF.adjust_hue(x, hue)), hue
    grey = torch.rand(2, 1, 4, 4)
    assert _adjust_hue(grey, 0.1) is grey


def make_cotta(**overrides):
    cfg_s = OmegaConf.structured(SCENARIOS.config_of("synthetic_shift")(n_per_class=8))
    scen = SCENARIOS.get("synthetic_shift")(cfg_s, seed=0)
    torch.manual_seed(0)
    model = MODELS.get("small_cnn")(num_classes=scen.num_classes, input_shape=scen.input_shape, width=8)
    cfg = OmegaConf.structured(STRATEGIES.config_of("cotta")(n_augmentations=3, **overrides))
    s = STRATEGIES.get("cotta")(model, cfg, stream=StreamInfo.of(scen, cfg.batch_size))
    s.setup(source=scen.source)
    return s, next(iter(scen.experiences[1].test.batches(16))).x


def teacher_calls(s, x):
    calls = []
    handle = s.teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = s.adapt(x)
    handle.remove()
    return calls, out


@pytest.mark.parametrize("ap,prediction,clean_pass", [(1.0, "teacher", False), (0.0, "teacher", True),
                                                      (1.0, "ensemble", True), (1.0, "student", False)])
def test_cotta_clean_teacher_pass_only_when_needed(ap, prediction, clean_pass):
    s, x = make_cotta(ap=ap, prediction=prediction)
    calls, out = teacher_calls(s, x)
    views = 3 if ap == 1.0 else 0
    assert len(calls) == views + int(clean_pass)
    assert out.shape == (len(x), s.stream.num_classes) and torch.isfinite(out).all()


def test_cotta_ensemble_prediction_adds_clean_teacher_logits():
    s, x = make_cotta(ap=1.0, prediction="ensemble")
    import copy
    teacher = copy.deepcopy(s.teacher)
    student = copy.deepcopy(s.model)
    out = s.adapt(x)
    with torch.no_grad():
        assert torch.equal(out, student(x) + teacher(x))


def test_cotta_with_channels_last_model_computes_the_same_in_float64():
    """model.channels_last=true only changes the summation order: in float64 the predictions and the
    adapted weights equal the NCHW run's up to float64 rounding (the EMA, the stochastic restore and the
    views work on channels-last weights)."""
    runs = []
    for layout in (torch.contiguous_format, torch.channels_last):
        s, x = make_cotta(ap=1.0)
        s.model.double().to(memory_format=layout)
        s.teacher.double().to(memory_format=layout)
        s.anchor.double().to(memory_format=layout)
        s.source_weights = [w.double() for w in s.source_weights]
        s.optimizer = s.make_optimizer(s.parameters_to_train())
        torch.manual_seed(5)
        outs = [s.adapt(x.double()) for _ in range(3)]
        convs = [p for p in s.model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=layout) for p in convs)
        runs.append((outs, [p.detach().clone() for p in s.model.parameters()]))
    (outs_a, w_a), (outs_b, w_b) = runs
    assert outs_a[0].dtype == torch.float64
    assert max(float((a - b).abs().max()) for a, b in zip(outs_a, outs_b)) < 1e-10
    assert max(float((a - b).abs().max()) for a, b in zip(w_a, w_b)) < 1e-10
    assert max(float((a - w).abs().max()) for a, w in zip(w_a, [p.detach() for p in make_cotta()[0].model.parameters()])) > 1e-6
