"""Helpers shared by the test-time-adaptation strategies (functions, not a class layer).

- ``use_batch_statistics(model)``: every BatchNorm layer normalizes with the statistics of the
  current batch, in train *and* eval mode (running statistics removed), as the Tent/CoTTA
  authors configure their models (tent.py ``configure_model``).
- ``norm_affine_parameters(model, layer_and_group_norm)``: the affine weight/bias of the
  normalization layers (Tent's ``collect_params``).
- ``softmax_entropy(logits)``: per-sample Shannon entropy of the softmax prediction.
"""
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def use_batch_statistics(model):
    """Make every BatchNorm layer use batch statistics only; returns the list of BN layers."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in layers:
        m.track_running_stats = False
        m.running_mean = None
        m.running_var = None
        m.num_batches_tracked = None
    return layers


def norm_affine_parameters(model, layer_and_group_norm=False):
    """[(name, parameter)] of the BatchNorm affine weights/biases (optionally LayerNorm/GroupNorm too)."""
    kinds = (_BatchNorm, nn.LayerNorm, nn.GroupNorm) if layer_and_group_norm else (_BatchNorm,)
    out = []
    for mod_name, m in model.named_modules():
        if isinstance(m, kinds):
            for p_name, p in m.named_parameters(recurse=False):
                if p_name in ("weight", "bias"):
                    out.append((f"{mod_name}.{p_name}" if mod_name else p_name, p))
    return out


def softmax_entropy(logits):
    """H(softmax(z)) = -sum_c p_c log p_c per row of ``logits`` [B, C] -> [B]."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class batch_norm_groups:
    """Context manager: the model's batch-statistics BatchNorm layers normalize each of ``groups``
    equal consecutive slices of the batch with that slice's own statistics.

    Lets ``groups`` batches (e.g. CoTTA's augmented views) go through the network in one forward
    pass while computing exactly what ``groups`` separate passes would (up to float rounding):
    the slices are laid side by side along the channel axis, so the native batch-norm kernel does
    the work. Layers that normalize with running statistics are left alone (their output does not
    depend on the batch).
    """

    def __init__(self, model, groups):
        self.groups = int(groups)
        self.layers = [m for m in model.modules() if isinstance(m, _BatchNorm)
                       and (m.training or m.running_mean is None)] if self.groups > 1 else []

    def __enter__(self):
        for m in self.layers:
            m.forward = _grouped_forward(m, self.groups)
        return self

    def __exit__(self, *exc):
        for m in self.layers:
            del m.forward            # back to the class's forward
        return False


def _grouped_forward(bn, groups):
    def forward(x):
        n, c = x.shape[:2]
        b = n // groups
        # [g*B, C, ...] -> [B, g*C, ...]: group k's channels become channels k*C .. k*C+C-1
        xg = x.reshape(groups, b, c, *x.shape[2:]).transpose(0, 1).reshape(b, groups * c, *x.shape[2:])
        w = bn.weight.repeat(groups) if bn.weight is not None else None
        bias = bn.bias.repeat(groups) if bn.bias is not None else None
        y = torch.nn.functional.batch_norm(xg, None, None, w, bias, True, 0.0, bn.eps)
        return y.reshape(b, groups, c, *x.shape[2:]).transpose(0, 1).reshape(x.shape)
    return forward
