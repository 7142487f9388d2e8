"""Model registry and the one factory, ``build_model(cfg, num_classes, input_shape)``.

Built-in models are declared below and their module is imported when a run names them; any timm
model is available as ``timm/<name>`` (e.g. ``model.name=timm/vit_base_patch16_224``).
"""
from cl.models._build import InputNormalize, build_model, load_checkpoint, unwrap  # noqa: F401
from cl.registry import MODELS

for _name, _module in [
    ("mlp", "small"), ("small_cnn", "small"),
    ("resnet18_cifar", "resnet18"), ("resnet18_cifar_reduced", "resnet18"),
    ("cifar_resnet20", "cifar_resnet"), ("cifar_resnet32", "cifar_resnet"),
    ("cifar_resnet44", "cifar_resnet"), ("cifar_resnet56", "cifar_resnet"),
    ("wide_resnet28_10", "wide_resnet"), ("resnext29_32x4d", "resnext"),
    ("resnet50", "imagenet"), ("vit_tiny_cifar", "vit"),
    ("gpt", "gpt"), ("hf_causal_lm", "hf_lm"),                     # language models (token scenarios)
    ("clip", "clip"),                      # open_clip CLIP, zero-shot head from class names (extra: clip)
]:
    MODELS.declare(_name, f"cl.models.{_module}")
