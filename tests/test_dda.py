"""DDA / SDA on tiny random diffusers models built here and saved to a folder, loaded as a user would:
the projection (shape, determinism, low-pass guidance), the ensembles by hand, the cache, SDA's
fine-tuning stage, and the configuration errors."""
import math

import pytest
import torch

pytest.importorskip("diffusers")

from cl.errors import ConfigError  # noqa: E402
from cl.registry import load_builtins  # noqa: E402
from strategies._diffusion_projection import DiffusionProjection, low_pass  # noqa: E402
from strategies.dda import DDA, DDAConfig, ensemble  # noqa: E402

load_builtins()
FAST = dict(num_inference_steps=6, steps=3, downsample=2)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """A tiny unconditional DDPMPipeline (8x8 RGB) saved with save_pretrained, as a user would have one."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(3)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    folder = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(folder))
    return str(folder)


def images(n=4, c=3, size=8, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_low_pass_keeps_smooth_images_and_removes_a_checkerboard():
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(low_pass(flat, 4), flat, atol=1e-5)
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float().expand(1, 3, 8, 8)
    filtered = low_pass(checker * 2 - 1, 2)                  # zero-mean alternation: its 2x2 averages are 0
    assert filtered.abs().max() < 0.05 and low_pass(checker, 1) is checker


def test_projection_keeps_shape_and_is_deterministic_with_a_seed(pipeline_dir):
    x = images()
    a = DiffusionProjection(pipeline_dir, **FAST).get_many(x)
    assert a.shape == x.shape and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    b = DiffusionProjection(pipeline_dir, **FAST, chunk=1).get_many(x[[2, 0, 3, 1]])   # other batching and order
    assert torch.equal(b, a[[2, 0, 3, 1]])
    c = DiffusionProjection(pipeline_dir, **FAST, seed=1).get_many(x)
    assert not torch.equal(c, a)                             # the seed enters each image's noise
    other = DiffusionProjection(pipeline_dir, **FAST).get_many(images(2, c=3, size=12))   # resized to 8 and back
    gray = DiffusionProjection(pipeline_dir, **FAST).get_many(images(2, c=1))
    assert other.shape == (2, 3, 12, 12) and gray.shape == (2, 1, 8, 8)


def test_low_pass_guidance_pulls_the_low_frequencies_towards_the_input(pipeline_dir):
    x = images(6, seed=1)
    settings = dict(num_inference_steps=10, steps=6, downsample=2)
    guided = DiffusionProjection(pipeline_dir, **settings, guidance_scale=6.0).get_many(x)
    free = DiffusionProjection(pipeline_dir, **settings, guidance_scale=0.0).get_many(x)

    def low_distance(y):
        return (low_pass(y * 2 - 1, 2) - low_pass(x * 2 - 1, 2)).flatten(1).norm(dim=1)

    assert (low_distance(guided) < 0.6 * low_distance(free)).all(), (low_distance(guided), low_distance(free))


def test_ensembles_by_hand():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    pa = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    pb = [1 / (1 + math.e), math.e / (1 + math.e)]
    expected = torch.tensor([[math.log((pa[0] + pb[0]) / 2), math.log((pa[1] + pb[1]) / 2)]])
    assert torch.allclose(ensemble(a, b, "sum"), expected, atol=1e-6)
    assert torch.allclose(ensemble(a, b, "original"), torch.log(torch.tensor([pa])), atol=1e-6)
    assert torch.allclose(ensemble(a, b, "projected"), torch.log(torch.tensor([pb])), atol=1e-6)


class Linear(torch.nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_dda_predicts_the_ensemble_of_the_image_and_its_projection_and_reuses_the_cache(pipeline_dir, tmp_path):
    x = images(5, seed=2)
    cache = str(tmp_path / "cache")
    s = DDA(Linear(), DDAConfig(pipeline=pipeline_dir, cache_dir=cache, **FAST), num_classes=3)
    s.setup()
    out = s.adapt(x)
    model = Linear()
    projected = DiffusionProjection(pipeline_dir, **FAST).get_many(x)
    expected = ((model(x).softmax(1) + model(projected).softmax(1)) / 2).log()
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, model(x).log_softmax(1), atol=1e-3)      # the projection changed the answer
    assert [p for p in s.model.parameters() if p.requires_grad] == [] and s.optimizer is None
    # a second run reads the projections from the cache and never loads the diffusion model
    t = DDA(Linear(), DDAConfig(pipeline=pipeline_dir, cache_dir=cache, **FAST), num_classes=3)
    t.setup()
    assert torch.allclose(t.adapt(x), out) and t.projection.unet is None


def test_configuration_errors(pipeline_dir):
    with pytest.raises(ConfigError, match="ensemble"):
        DDA(Linear(), DDAConfig(pipeline=pipeline_dir, ensemble="max"), num_classes=3)
    with pytest.raises(ConfigError, match="steps"):
        DDA(Linear(), DDAConfig(pipeline=pipeline_dir, steps=20, num_inference_steps=10), num_classes=3)
    with pytest.raises(ConfigError, match="must divide"):
        DDA(Linear(), DDAConfig(pipeline=pipeline_dir, downsample=16), num_classes=3).setup()
    with pytest.raises(ConfigError, match="strategy.pipeline is empty"):
        DDA(Linear(), DDAConfig(), num_classes=3).setup()
    with pytest.raises(ConfigError, match="Cannot load"):
        DDA(Linear(), DDAConfig(pipeline="/nonexistent/pipeline"), num_classes=3).setup()


# ---------------------------------------------------------------------------- SDA
def two_class_source(n=6):
    """Dark images (class 0) and bright ones (class 1), uint8, as a scenario's labelled source set."""
    from cl.data import TensorData
    x = torch.cat([images(n, seed=4) * 0.3, 0.7 + images(n, seed=5) * 0.3])
    return TensorData((x * 255).round().to(torch.uint8), torch.tensor([0] * n + [1] * n))


def sda(pipeline_dir, **kw):
    from strategies.sda import SDA, SDAConfig
    settings = dict(pipeline=pipeline_dir, **FAST, per_class=4, finetune_epochs=15, finetune_batch=4, lr=0.05,
                    crop_scale=[1.0, 1.0], flip=0.0)
    return SDA(Linear(2), SDAConfig(**{**settings, **kw}), num_classes=2)


def test_sda_fine_tunes_a_copy_on_projected_synthetic_images_and_ensembles_it_with_the_source_model(pipeline_dir):
    source = two_class_source()
    s = sda(pipeline_dir)
    s.setup(source=source)
    kept = torch.cat([torch.arange(4), 6 + torch.arange(4)])            # per_class=4 of each class, in order
    projected = DiffusionProjection(pipeline_dir, **FAST).get_many(source.x[kept].float() / 255)
    y = source.y[kept]
    before = torch.nn.functional.cross_entropy(Linear(2)(projected), y)
    after = torch.nn.functional.cross_entropy(s.synthetic_model(projected), y)
    assert after < 0.5 * before, (before, after)
    assert all(torch.equal(p, q) for p, q in zip(s.model.parameters(), Linear(2).parameters()))   # source model kept
    x = images(3, seed=6)
    expected = ((Linear(2)(x).softmax(1) + s.synthetic_model(DiffusionProjection(pipeline_dir, **FAST).get_many(x))
                 .softmax(1)) / 2).log()
    assert torch.allclose(s.adapt(x), expected, atol=1e-5)
    # the checkpointed state restores the fine-tuned copy
    t = sda(pipeline_dir, finetune_epochs=0)
    t.setup(source=source)
    assert not torch.allclose(t.adapt(x), expected, atol=1e-3)
    t.load_extra_state(s.extra_state())
    assert torch.allclose(t.adapt(x), expected, atol=1e-5)


def test_sda_reads_a_folder_of_generated_images_and_checks_its_classes(pipeline_dir, tmp_path):
    from PIL import Image

    from cl.errors import DataError
    for c, value in enumerate((30, 220)):
        (tmp_path / f"{c:04d}").mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), (value, value - 10 * i, value)).save(tmp_path / f"{c:04d}" / f"{i}.png")
    s = sda(str(pipeline_dir), synthetic=str(tmp_path), per_class=2)
    s.stream = s.stream.__class__(num_classes=2, input_shape=(3, 8, 8))
    x, y = s.synthetic_images(None)
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 1, 1] and x[0, 0, 0, 0] == 30 and x[2, 1, 0, 0] == 220
    (tmp_path / "0002").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "0002" / "a.png")
    with pytest.raises(DataError, match="3 class folders"):
        s.synthetic_images(None)
    with pytest.raises(ConfigError, match="source"):
        sda(pipeline_dir).setup(source=None)                           # synthetic=source needs the source set
