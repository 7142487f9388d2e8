"""Penultimate features of any registered model, by a forward pre-hook on its classifier head.

Methods such as RMT (source prototypes, contrastive loss) need the backbone features that enter
the classifier. Instead of splitting each architecture by hand, we find the head module and
capture its input during the ordinary forward pass, so logits and features come from ONE forward:

    head = classifier_head(model)          # nn.Module: the last linear layer
    feats, logits = features_and_logits(model, x)   # feats: [B, D] (flattened head input)

The head is found on the network inside an ``InputNormalize`` wrapper:
  * ``nn.Sequential`` -> its last child (``mlp``, ``small_cnn``);
  * a ``get_classifier()`` method (timm models);
  * an attribute ``fc`` / ``linear`` / ``classifier`` / ``head`` holding a module
    (torchvision ResNets, ``wide_resnet28_10``, ``cifar_resnet*``, ``resnet18_cifar``, ``resnext29_32x4d``).
Anything else is a ConfigError that says which attribute to add.
"""
from contextlib import contextmanager

from torch import nn

from cl.errors import ConfigError
from cl.models._build import unwrap

__all__ = ["classifier_head", "feature_dim", "features_and_logits", "capture_features"]

HEAD_ATTRS = ("fc", "linear", "classifier", "head")


def classifier_head(model):
    """The module whose input is the feature vector and whose output is the logits (the one head
    finder of the platform): ``get_classifier()`` (timm), else the last layer of an
    ``nn.Sequential``, else the first of the attributes ``fc``, ``linear``, ``classifier``, ``head``."""
    net = unwrap(model)
    if hasattr(net, "get_classifier"):
        head = net.get_classifier()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    if isinstance(net, nn.Sequential) and len(net) > 0:
        return net[-1]
    for name in HEAD_ATTRS:
        head = getattr(net, name, None)
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    raise ConfigError(f"Cannot find the classifier head of {type(net).__name__}: give it a `get_classifier()` "
                      f"method or one of the attributes {', '.join(HEAD_ATTRS)}, or make it an nn.Sequential. "
                      "Naming the final layer `fc` is enough for feature-based methods (rmt, nmc, fpf).")


def feature_dim(model):
    """Size of the feature vector entering the head (its ``in_features`` for a Linear head)."""
    head = classifier_head(model)
    if isinstance(head, nn.Linear):
        return head.in_features
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[0].in_features
    raise ConfigError(f"Cannot infer the feature size of head {type(head).__name__}; it has no nn.Linear.")


@contextmanager
def capture_features(model):
    """Within the block, ``box[0]`` holds the (flattened) head input of the latest forward."""
    box = [None]

    def hook(_module, inputs):
        box[0] = inputs[0].flatten(1)

    handle = classifier_head(model).register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def features_and_logits(model, x):
    """(features [B, D], logits [B, K]) from one forward of ``model``; gradients flow through both."""
    with capture_features(model) as box:
        logits = model(x)
    return box[0], logits
