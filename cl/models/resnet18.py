"""The CIFAR ResNet-18 of the continual-learning literature.

- ``resnet18_cifar`` (nf=64): the backbone of DER/DER++ (Buzzega et al., NeurIPS 2020, Mammoth
  ``backbone/ResNet18.py``) and k-FPF (Zhao et al., ICML 2023) on Seq-CIFAR-10: a 3x3 stride-1
  first conv with no max-pool, BasicBlocks [2, 2, 2, 2] of widths nf, 2nf, 4nf, 8nf with strides
  1, 2, 2, 2, global average pooling and one linear head over all classes.
- ``resnet18_cifar_reduced`` (nf=20): the reduced-width "ResNet-S" of GEM (Lopez-Paz & Ranzato,
  NeurIPS 2017) and A-GEM/ER (Chaudhry et al., ICLR 2019 / arXiv 1902.10486), ~1/3 of the width.

The network exposes the features/classifier split that strategies such as FPF, NMC and RMT use:
``net.features(x) -> [B, 8nf]`` and ``net.classifier`` (an ``nn.Linear``); ``net(x)`` is
``net.classifier(net.features(x))``. PyTorch default initialization, as in Mammoth.
"""
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from cl.models._blocks import BasicBlock
from cl.registry import MODELS


def conv_shortcut(c_in, c_out, stride):
    """The option-B ``downsample`` of ``BasicBlock``: 1x1 conv(stride) -> BN (Mammoth ResNet18)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class ResNetCifar(nn.Module):
    """ResNet with BasicBlocks for small (e.g. 32x32) images; ``features`` + ``classifier``."""

    def __init__(self, num_classes, in_channels=3, nf=64, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.nf = nf
        self.conv1 = nn.Conv2d(in_channels, nf, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        layers, c = [], nf
        for i, n in enumerate(blocks):
            width, stride = nf * 2 ** i, 1 if i == 0 else 2
            stage = []
            for b in range(n):
                stage.append(BasicBlock(c, width, stride if b == 0 else 1, downsample=conv_shortcut))
                c = width
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)

    def features(self, x):
        """[B, C, H, W] -> [B, 8nf] (globally average-pooled last stage)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


def _check_shape(input_shape, name):
    if len(input_shape) != 3:
        raise ConfigError(f"Model '{name}' needs image input [C, H, W]; got input shape {tuple(input_shape)}. "
                          "Use model.name=mlp for feature vectors.")


@MODELS.register("resnet18_cifar")
def resnet18_cifar(num_classes, input_shape=(3, 32, 32), nf=64):
    """CIFAR ResNet-18 (DER/Mammoth, k-FPF): 3x3 stem, no max-pool, widths nf..8nf (nf=64)."""
    _check_shape(input_shape, "resnet18_cifar")
    return ResNetCifar(num_classes, in_channels=input_shape[0], nf=int(nf))


@MODELS.register("resnet18_cifar_reduced")
def resnet18_cifar_reduced(num_classes, input_shape=(3, 32, 32), nf=20):
    """Reduced-width CIFAR ResNet-18 of GEM/A-GEM/ER ("ResNet-S", nf=20), for CPU runs."""
    _check_shape(input_shape, "resnet18_cifar_reduced")
    return ResNetCifar(num_classes, in_channels=input_shape[0], nf=int(nf))
