"""The TTA source architectures: checkpoints load by path, mismatches are explained, and the
public CIFAR-10 ResNet-20 weights reproduce their accuracy on the JPEG copy of CIFAR-10."""
import os

import numpy as np
import pytest
import torch

from cl import io
from cl.config import ModelConfig
from cl.errors import CheckpointError
from cl.models import build_model
from cl.models.cifar_resnet import CIFAR_RESNET_NORMALIZE
from conftest import SHARED

# (name, args, num_classes, input_shape): small variants keep the test fast
ARCHS = [("cifar_resnet20", {}, 10, (3, 32, 32)),
         ("wide_resnet28_10", {"depth": 10, "widen_factor": 2}, 10, (3, 32, 32)),
         ("resnext29_32x4d", {"depth": 11, "cardinality": 2, "base_width": 4}, 100, (3, 32, 32)),
         pytest.param("resnet50", {}, 7, (3, 32, 32), marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,args,num_classes,shape", ARCHS, ids=["cifar_resnet20", "wide_resnet", "resnext", "resnet50"])
def test_checkpoint_loads_by_path(tmp_path, name, args, num_classes, shape):
    torch.manual_seed(0)
    net = build_model(ModelConfig(name=name, args=args), num_classes, shape).eval()
    # the layout of old DataParallel checkpoints: nested, 'module.' prefix, no num_batches_tracked
    state = {"module." + k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "w.pt"
    io.torch_save({"state_dict": state, "best_prec1": 91.7}, path)
    torch.manual_seed(1)
    loaded = build_model(ModelConfig(name=name, args=args, checkpoint=str(path)), num_classes, shape).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))


def test_key_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    r20 = build_model(ModelConfig(name="cifar_resnet20"), 10, (3, 32, 32))
    path = tmp_path / "r20.pt"
    io.torch_save(r20.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        build_model(ModelConfig(name="cifar_resnet32", checkpoint=str(path)), 10, (3, 32, 32))
    assert "Missing keys" in str(e.value) and "layer1.3.conv1.weight" in str(e.value)
    r32 = build_model(ModelConfig(name="cifar_resnet32"), 10, (3, 32, 32))
    io.torch_save(r32.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        build_model(ModelConfig(name="cifar_resnet20", checkpoint=str(path)), 10, (3, 32, 32))
    assert "Unexpected keys" in str(e.value) and "layer1.3.conv1.weight" in str(e.value)
    with pytest.raises(CheckpointError, match="Shape mismatch"):
        io.torch_save(r20.state_dict(), path)
        build_model(ModelConfig(name="cifar_resnet20", checkpoint=str(path)), 100, (3, 32, 32))


def test_tta_adapted_checkpoint_without_bn_statistics_loads_with_a_warning(tmp_path):
    """A model adapted with batch-statistics BN (running stats removed) and saved loads back into
    a fresh model (with a warning) and gives the same outputs under batch statistics; any other
    missing key is still an error."""
    from strategies.tta_base import use_batch_statistics
    torch.manual_seed(0)
    adapted = build_model(ModelConfig(name="cifar_resnet20"), 10, (3, 32, 32))
    use_batch_statistics(adapted)
    path = tmp_path / "adapted.pt"
    io.torch_save(adapted.state_dict(), path)
    with pytest.warns(UserWarning, match="no BatchNorm running statistics"):
        loaded = build_model(ModelConfig(name="cifar_resnet20", checkpoint=str(path)), 10, (3, 32, 32))
    use_batch_statistics(loaded)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(adapted.eval()(x), loaded.eval()(x))
    state = {k: v for k, v in adapted.state_dict().items() if k != "linear.weight"}
    io.torch_save(state, path)
    with pytest.raises(CheckpointError, match="linear.weight"):
        build_model(ModelConfig(name="cifar_resnet20", checkpoint=str(path)), 10, (3, 32, 32))


def test_option_a_shortcut_pads_channels():
    from cl.models.cifar_resnet import PadShortcut
    x = torch.rand(2, 16, 8, 8)
    y = PadShortcut(8)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


RESNET20 = os.path.join(SHARED, "models", "cifar-resnet", "resnet20-12fca82f.th")
CIFAR_JPEG = os.path.join(SHARED, "data", "cifar10-jpeg", "test")


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not (os.path.isfile(RESNET20) and os.path.isdir(CIFAR_JPEG)),
                    reason="needs the shared ResNet-20 weights and the CIFAR-10 JPEG copy (set CL_SHARED)")
def test_pretrained_resnet20_accuracy_on_jpeg_cifar10():
    from PIL import Image
    classes = sorted(os.listdir(CIFAR_JPEG))
    xs, ys = [], []
    for label, cls in enumerate(classes):                      # the first 100 images of each class
        for f in sorted(os.listdir(os.path.join(CIFAR_JPEG, cls)))[:100]:
            with Image.open(os.path.join(CIFAR_JPEG, cls, f)) as im:
                xs.append(np.asarray(im.convert("RGB")))
            ys.append(label)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor(ys)
    net = build_model(ModelConfig(name="cifar_resnet20", checkpoint=RESNET20, normalize=CIFAR_RESNET_NORMALIZE),
                      10, (3, 32, 32)).eval()
    with torch.no_grad():
        acc = torch.cat([net(x[i:i + 250]).argmax(1) for i in range(0, 1000, 250)]).eq(y).float().mean().item()
    assert 0.77 < acc < 0.86, acc          # the README reports 81.0% on the full 10,000 images


def test_pretrained_flag_selects_torchvision_weights(monkeypatch):
    import torchvision
    from cl.errors import ConfigError
    seen = {}
    real = torchvision.models.resnet50

    def fake(weights=None, **kw):          # no download: record the request, build random weights
        seen["weights"] = weights
        return real(weights=None, **kw)

    monkeypatch.setattr(torchvision.models, "resnet50", fake)
    net = build_model(ModelConfig(name="resnet50", pretrained=True), 1000, (3, 224, 224))
    assert seen["weights"] == torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    assert net.loaded_pretrained and net.fc.out_features == 1000
    with pytest.raises(ConfigError, match="no downloadable pretrained weights"):
        build_model(ModelConfig(name="cifar_resnet20", pretrained=True), 10, (3, 32, 32))
