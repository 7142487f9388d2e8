"""Frozen-backbone features: the model minus its classifier head, and a per-dataset feature cache.

Methods on a frozen pretrained backbone (NMC, prompt methods' query function) need the features
that enter the classifier, and, since the backbone never changes, each image needs to pass
through it only once. Two pieces:

``Backbone(model, input_size=0)`` -- an ``nn.Module`` whose forward is ``x [B, ...] -> [B, D]``:
the model minus its classifier head. Inputs are in [0, 1] as the runner serves them; an
``InputNormalize`` wrapper's normalization is kept. How the head is removed, by model type
(first match wins):

  1. timm models (``forward_features`` + ``forward_head``):
     ``forward_head(forward_features(x), pre_logits=True)`` -- for a ViT with token pooling this is
     the final-norm CLS token, as in Janson et al.'s NMC code (``forward_features(x)[:, 0]``);
  2. a ``features(x)`` *method* (not a submodule), e.g. ``resnet18_cifar``: ``net.features(x)``;
  3. ``nn.Sequential`` (``mlp``, ``small_cnn``): all children but the last, flattened;
  4. anything with a head at ``.fc`` / ``.linear`` / ``.classifier`` / ``.head`` (torchvision
     ResNets/VGG, ``cifar_resnet*``...): the head's input, captured by a forward pre-hook during
     an ordinary forward (``cl.models.features.capture_features``).

``input_size`` > 0 resizes the input (bilinear, antialiased) to ``input_size x input_size`` first,
e.g. 224 for ViT-B/16 on 32x32 CIFAR, like ``torchvision.transforms.Resize(224)`` in the NMC code.

``FeatureCache(backbone, batch_size, device)`` -- ``cache.get(data)`` returns the features of a
whole ``TensorData`` (in its order, without its augmentation transform), computed on the first
call and then kept, keyed by the object's identity (a weak reference: when the TensorData is
garbage-collected its entry goes too). Only valid while the backbone is frozen.
"""
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from cl.models._build import InputNormalize, unwrap
from cl.models.features import capture_features, classifier_head

__all__ = ["Backbone", "FeatureCache"]


class Backbone(nn.Module):
    """The model minus its classifier head: ``x -> features [B, D]`` (see the module docstring)."""

    def __init__(self, model, input_size=0):
        super().__init__()
        self.model = model
        self.input_size = int(input_size)
        net = unwrap(model)
        if hasattr(net, "forward_features") and hasattr(net, "forward_head"):
            self.kind = "timm"
        elif callable(getattr(net, "features", None)) and not isinstance(net.features, nn.Module):
            self.kind = "features_method"
        elif isinstance(net, nn.Sequential) and len(net) > 1:
            self.kind = "sequential"
        else:
            classifier_head(model)  # raises a ConfigError naming what is missing
            self.kind = "head_hook"

    def forward(self, x):
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        if self.kind == "head_hook":
            with capture_features(self.model) as box:
                self.model(x)
            return box[0]
        if isinstance(self.model, InputNormalize):
            x = (x - self.model.mean) / self.model.std
        net = unwrap(self.model)
        if self.kind == "timm":
            return net.forward_head(net.forward_features(x), pre_logits=True).flatten(1)
        if self.kind == "features_method":
            return net.features(x).flatten(1)
        for layer in list(net.children())[:-1]:
            x = layer(x)
        return x.flatten(1)


class FeatureCache:
    """Features of whole TensorData objects, each computed once (frozen backbones only).

    ``fn``: ``x [B, ...] -> features [B, D]`` (e.g. a ``Backbone``, maybe followed by L2
    normalization). ``get(data)`` returns a float tensor [len(data), D] on ``device``.
    ``computed`` counts the samples that went through ``fn`` (for tests and timing).
    """

    def __init__(self, fn, batch_size=256, device="cpu", autocast=None):
        self.fn = fn
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.autocast = autocast
        self.computed = 0
        self._store = {}

    def __len__(self):
        return len(self._store)

    def __contains__(self, data):
        entry = self._store.get(id(data))
        return entry is not None and entry[0]() is data

    @torch.no_grad()
    def get(self, data):
        key = id(data)
        entry = self._store.get(key)
        if entry is not None and entry[0]() is data:
            return entry[1]
        feats = self.compute(data)
        self._store[key] = (weakref.ref(data, lambda _ref, k=key: self._store.pop(k, None)), feats)
        return feats

    @torch.no_grad()
    def compute(self, data):
        """Features of ``data`` in order, without its augmentation transform (not cached)."""
        plain = data.with_transform(None)
        out = []
        for batch in plain.batches(self.batch_size, device=self.device):
            if self.autocast is not None:
                with self.autocast():
                    f = self.fn(batch.x)
            else:
                f = self.fn(batch.x)
            out.append(f.float())
            self.computed += len(batch.y)
        if not out:
            raise ConfigError("Cannot compute features of an empty dataset.")
        return torch.cat(out)

    def clear(self):
        self._store.clear()
