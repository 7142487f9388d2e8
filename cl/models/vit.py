"""Small timm Vision Transformers for 32x32 inputs (tests, CPU runs, the prompt-strategy example).

``vit_tiny_cifar``: timm's ``VisionTransformer`` (Dosovitskiy et al., "An Image is Worth 16x16
Words", ICLR 2021, arXiv 2010.11929) with 4x4 patches on 32x32 images, i.e. 64 patch tokens plus
[CLS]. It is the same class as ``timm/vit_base_patch16_224``, so everything in ``strategies._prompts``
(prompt-tuning, prefix-tuning, adapters) runs on it unchanged; only the sizes differ.
"""
from cl.errors import ConfigError
from cl.registry import MODELS


@MODELS.register("vit_tiny_cifar")
def vit_tiny_cifar(num_classes, input_shape, embed_dim=64, depth=5, num_heads=4, patch_size=4, mlp_ratio=4.0):
    """timm VisionTransformer, image side = input_shape[-1] (32), patch 4, embed 64, depth 5, 4 heads."""
    from timm.models.vision_transformer import VisionTransformer
    if len(input_shape) != 3 or input_shape[-1] % patch_size:
        raise ConfigError(f"vit_tiny_cifar needs [C, H, W] images with a side divisible by patch_size={patch_size}, "
                          f"got input shape {tuple(input_shape)}.")
    if embed_dim % num_heads:
        raise ConfigError(f"vit_tiny_cifar: embed_dim={embed_dim} must be divisible by num_heads={num_heads}.")
    return VisionTransformer(img_size=input_shape[-1], patch_size=patch_size, in_chans=input_shape[0],
                             num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             mlp_ratio=mlp_ratio, class_token=True, global_pool="token")
