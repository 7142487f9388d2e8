"""Helpers shared by the test-time-adaptation strategies (functions, not a class layer).

- ``use_batch_statistics(model)``: every BatchNorm layer normalizes with the statistics of the
  current batch, in train *and* eval mode (running statistics removed), as the Tent/CoTTA
  authors configure their models (tent.py ``configure_model``).
- ``norm_affine_parameters(model, layer_and_group_norm)``: the affine weight/bias of the
  normalization layers (Tent's ``collect_params``).
- ``softmax_entropy(logits)``: per-sample Shannon entropy of the softmax prediction.
- ``configure_norm_adaptation(model, who, skip_top)``: the set-up shared by the entropy-style
  methods of the RMT authors' benchmark (Tent, EATA, SAR, DeYO, RPL, ROID, CMF, SANTA).
- ``SourceStream``: labelled source batches in a seeded order that can be resumed by position.
"""
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cl.errors import ConfigError
from cl.models._build import unwrap

# Module-name fragments SAR and DeYO leave out of adaptation (their ``collect_params``): the last
# stage of a ResNet, the last three blocks of a ViT-B and the final norm of a ViT.
TOP_LAYERS = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")


def use_batch_statistics(model):
    """Make every BatchNorm layer use batch statistics only; returns the list of BN layers."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for m in layers:
        m.track_running_stats = False
        m.running_mean = None
        m.running_var = None
        m.num_batches_tracked = None
    return layers


def norm_affine_parameters(model, layer_and_group_norm=False, skip_top=False):
    """[(name, parameter)] of the BatchNorm affine weights/biases (optionally LayerNorm/GroupNorm too).
    ``skip_top``: leave out modules whose name contains one of ``TOP_LAYERS`` or is ``norm`` (SAR, DeYO)."""
    kinds = (_BatchNorm, nn.LayerNorm, nn.GroupNorm) if layer_and_group_norm else (_BatchNorm,)
    out = []
    wrapped = unwrap(model) is not model
    for mod_name, m in model.named_modules():
        rel = mod_name[len("net."):] if wrapped and mod_name.startswith("net.") else mod_name
        if skip_top and (rel == "norm" or any(t in rel for t in TOP_LAYERS)):
            continue
        if isinstance(m, kinds):
            for p_name, p in m.named_parameters(recurse=False):
                if p_name in ("weight", "bias"):
                    out.append((f"{mod_name}.{p_name}" if mod_name else p_name, p))
    return out


def softmax_entropy(logits):
    """H(softmax(z)) = -sum_c p_c log p_c per row of ``logits`` [B, C] -> [B]."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def configure_norm_adaptation(model, who, skip_top=False):
    """Eval mode, every weight frozen except the affine weight/bias of the BatchNorm, LayerNorm and
    GroupNorm layers, BatchNorm normalizing with the test batch's statistics (the ``configure_model``
    + ``collect_params`` of Tent/EATA/SAR/DeYO/RPL/ROID/CMF/SANTA in the RMT authors' benchmark).
    Returns the trained [(name, parameter)]; a ConfigError naming ``who`` if there is none."""
    model.eval()
    model.requires_grad_(False)
    use_batch_statistics(model)
    params = norm_affine_parameters(model, layer_and_group_norm=True, skip_top=skip_top)
    if not params:
        raise ConfigError(f"{who} adapts the affine parameters of normalization layers (BatchNorm, LayerNorm, "
                          "GroupNorm), but the model has none with affine weights"
                          f"{' outside its top layers' if skip_top else ''}. Use a model with normalization layers.")
    for _, p in params:
        p.requires_grad_(True)
    return params


class SourceStream:
    """Labelled source batches for methods that replay source data (GTTA, RMT-style).

    Pass ``k`` (from 0) of the stream reads the source in the permutation seeded by ``seed + k``,
    so the position alone (``pos``, saved in checkpoints) says which batch comes next; the stream
    goes on over passes like the authors' re-created loader iterators.
    """

    def __init__(self, source, batch_size, seed):
        if source is None or len(source) == 0:
            raise ConfigError("This method needs labelled source data, but the scenario has none. Use a scenario "
                              "with source data (e.g. corruption_stream with scenario.with_source=true).")
        self.source, self.batch_size, self.seed = source, int(batch_size), int(seed)
        self.pos = 0

    def next(self, device="cpu"):
        """The next Batch(x, y) of ``batch_size`` source samples (the last one of a pass may be smaller)."""
        n_batches = self.source.num_batches(self.batch_size)
        epoch, k = divmod(self.pos, n_batches)
        order = torch.randperm(len(self.source), generator=torch.Generator().manual_seed(self.seed + epoch))
        self.pos += 1
        idx = order[k * self.batch_size:(k + 1) * self.batch_size]
        return next(self.source.subset(idx).batches(self.batch_size, device=device))


def source_subset(source, n, seed):
    """A seeded random subset of ``n`` samples of ``source`` (n < 0 or n >= len: all, seeded order)."""
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    return source.subset(order[:n] if 0 <= n < len(source) else order)


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
