"""Building blocks shared by the residual networks in ``cl.models``.

``BasicBlock`` is the two-3x3-conv residual block of He et al., "Deep Residual Learning for
Image Recognition", CVPR 2016 (arXiv:1512.03385). The CIFAR ResNet-20..56 (option-A, padding
shortcut) and the continual-learning ResNet-18 (option-B, 1x1-conv shortcut) differ only in the
shortcut used when a block changes the shape, which the caller passes as ``downsample``.
"""
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock"]


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU.

    Parameters: ``conv1``, ``bn1``, ``conv2``, ``bn2`` and, when ``stride != 1`` or
    ``c_in != c_out``, ``shortcut = downsample(c_in, c_out, stride)`` (identity otherwise).
    ``downsample`` is called after the convolutions are built, so their default initialization
    draws from the global RNG in the same order as a block written out by hand.
    """

    def __init__(self, c_in, c_out, stride=1, *, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = downsample(c_in, c_out, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))
