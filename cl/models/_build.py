"""Build a model from its config; load local checkpoints safely."""
import inspect
import warnings

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cl.errors import CheckpointError, ConfigError
from cl.io import torch_load
from cl.registry import MODELS

__all__ = ["build_model", "load_checkpoint", "unwrap", "InputNormalize"]


class InputNormalize(nn.Module):
    """(x - mean) / std in front of a network that expects normalized input; x is in [0, 1].

    Keeping normalization inside the model lets every strategy (and every TTA augmentation)
    work on [0, 1] images. The wrapped network is ``.net``; its state_dict is what is saved.
    """

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def unwrap(model):
    """The network inside an InputNormalize wrapper (the model itself otherwise)."""
    return model.net if isinstance(model, InputNormalize) else model


def build_model(cfg, num_classes, input_shape, class_names=None, class_templates=None):
    """cfg: ModelConfig. Returns an nn.Module mapping [B, *input_shape] to [B, num_classes].

    ``class_names`` / ``class_templates`` (the scenario's, one entry per label) go to builders that
    take them (vision-language models build their classifier from the class names)."""
    name = cfg.name
    args = dict(cfg.args or {})
    if name.startswith("timm/"):
        net = _timm_model(name[len("timm/"):], num_classes, input_shape, cfg.pretrained, args)
    else:
        builder = MODELS.get(name)
        if cfg.pretrained and "pretrained" in inspect.signature(builder).parameters:
            args.setdefault("pretrained", True)   # builders that can download their own weights
        params = inspect.signature(builder).parameters
        for key, value in (("class_names", class_names), ("class_templates", class_templates)):
            if key in params and value:
                args.setdefault(key, list(value))
        _check_args(name, builder, args)
        try:
            net = builder(num_classes=num_classes, input_shape=tuple(input_shape), **args)
        except TypeError as e:
            raise ConfigError(f"Bad model.args for model '{name}': {e}") from None
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            raise ConfigError(f"Model '{name}' cannot be built with model.args {args} for input shape "
                              f"{tuple(input_shape)}: {type(e).__name__}: {e}. Check model.args.") from None
        if cfg.pretrained and not getattr(net, "loaded_pretrained", False):
            raise ConfigError(f"Model '{name}' has no downloadable pretrained weights; "
                              "use model.checkpoint=PATH for local weights.")
    if cfg.checkpoint:
        load_checkpoint(net, cfg.checkpoint)
    if cfg.normalize is not None:
        mean, std = cfg.normalize
        net = InputNormalize(net, list(mean), list(std))
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _check_args(name, builder, args):
    """Each ``model.args`` value has the type of the builder parameter's default (an int width stays
    an int); a ConfigError naming the key otherwise. Parameters without a plain default are not checked."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return
    for key, value in args.items():
        ref = params[key].default if key in params else None
        if isinstance(ref, bool):
            ok = isinstance(value, bool)
        elif isinstance(ref, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(ref, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(ref, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise ConfigError(f"Wrong type for 'model.args.{key}' of model '{name}': expected {type(ref).__name__} "
                              f"(default {ref!r}), got {value!r}.")


def _timm_model(arch, num_classes, input_shape, pretrained, args):
    import timm
    if arch not in timm.list_models() and not timm.is_model(arch):
        raise ConfigError(f"timm has no model '{arch}'. List them with timm.list_models('*pattern*').")
    kwargs = dict(num_classes=num_classes, **args)
    if "vit" in arch or "deit" in arch:
        kwargs.setdefault("img_size", input_shape[-1])
    kwargs.setdefault("in_chans", input_shape[0])
    try:
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except Exception as e:  # network or hub failure
        if pretrained:
            raise ConfigError(f"Could not create timm/{arch} with pretrained weights ({e}). Without "
                              "internet, download the weights elsewhere and pass model.checkpoint=PATH.") from None
        raise


def _extract_state_dict(obj):
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if key in obj and isinstance(obj[key], dict):
                return _extract_state_dict(obj[key])
        return obj
    raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state_dict")


def load_checkpoint(net, path, strict=True):
    """Load weights from ``path`` (weights_only=True) into ``net``.

    Accepts a plain state_dict or one nested under 'state_dict'/'model'; strips a DataParallel
    'module.' prefix. Missing BatchNorm ``num_batches_tracked`` entries (old checkpoints) are
    filled in. A checkpoint without any BN running statistics (written by a test-time adaptation
    run that normalizes with batch statistics) loads with a warning. Any other key mismatch is an
    error listing missing and unexpected keys.
    """
    try:
        obj = torch_load(path)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint not found: {path}") from None
    except Exception as e:
        raise CheckpointError(f"Cannot read checkpoint {path}: {type(e).__name__}: {e}. The file may be "
                              "truncated or not a PyTorch checkpoint.") from None
    state = _extract_state_dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = net.state_dict()
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = sorted(set(own) - set(state))
    bn_stats = {f"{name}.{b}" for name, m in net.named_modules() if isinstance(m, _BatchNorm)
                for b in ("running_mean", "running_var") if getattr(m, b, None) is not None}
    if missing and set(missing) == bn_stats and set(state) <= set(own):
        warnings.warn(f"Checkpoint {path} has no BatchNorm running statistics: it was saved by a test-time "
                      "adaptation run whose BN layers normalize with test-batch statistics. The layers keep "
                      "their initial running statistics; evaluate it with a strategy that uses batch "
                      "statistics (bn, tent, mean_teacher, cotta, rmt).", stacklevel=2)
        state = {**state, **{k: own[k] for k in missing}}
        missing = []
    missing.sort(key=lambda k: k in bn_stats)          # parameters first, BN statistics last
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if strict and (missing or unexpected or shape):
        parts = [f"Checkpoint {path} does not match the model {type(net).__name__}."]
        if missing:
            parts.append(f"Missing keys ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}.")
        if unexpected:
            parts.append(f"Unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}.")
        if shape:
            parts.append("Shape mismatch: " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape[:10]) + ".")
        parts.append("Check model.name and model.args against the architecture that wrote the checkpoint.")
        if getattr(net, "checkpoint_hint", None):
            parts.append(net.checkpoint_hint)
        raise CheckpointError(" ".join(parts))
    net.load_state_dict(state, strict=strict)
    return net
