"""CIFAR ResNet-20/32/44/56 with "option A" (parameter-free) shortcuts.

K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385), Section 4.2: 3x3 conv (16 channels), three stages of n = (depth - 2) / 6
basic blocks with 16/32/64 channels, global average pooling, a linear classifier. When a
block changes the shape, the identity shortcut subsamples by 2 and zero-pads the new channels.

Parameter names (conv1, bn1, layer1-3.N.{conv1,bn1,conv2,bn2}, linear) match the widely used
public CIFAR-10 weights (akamaster/pytorch_resnet_cifar10), so those checkpoints load with
``model.checkpoint=PATH``. They were trained on inputs normalized with the ImageNet mean/std:
set ``model.normalize=[[0.485,0.456,0.406],[0.229,0.224,0.225]]`` (see ``CIFAR_RESNET_NORMALIZE``).
"""
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from cl.models._blocks import BasicBlock
from cl.registry import MODELS

CIFAR_RESNET_NORMALIZE = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]


class PadShortcut(nn.Module):
    """Option A shortcut: every second pixel, channels zero-padded by ``pad`` on each side."""

    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


def pad_shortcut(c_in, c_out, stride):
    """The option-A ``downsample`` of ``BasicBlock``: no parameters (stages double the width)."""
    return PadShortcut(c_out // 4)


class CifarResNet(nn.Module):
    """The 6n+2-layer CIFAR ResNet (n blocks per stage)."""

    def __init__(self, depth=20, num_classes=10, in_channels=3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, stages = 16, []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes, width, stride if i == 0 else 1, downsample=pad_shortcut))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _builder(depth):
    def build(num_classes, input_shape):
        return CifarResNet(depth, num_classes, in_channels=input_shape[0])
    build.__doc__ = (f"CIFAR ResNet-{depth} (He et al. 2016, option-A shortcuts); loads the public "
                     "akamaster CIFAR-10 weights (normalize with the ImageNet mean/std).")
    return build


cifar_resnet20 = MODELS.register("cifar_resnet20")(_builder(20))
cifar_resnet32 = MODELS.register("cifar_resnet32")(_builder(32))
cifar_resnet44 = MODELS.register("cifar_resnet44")(_builder(44))
cifar_resnet56 = MODELS.register("cifar_resnet56")(_builder(56))
