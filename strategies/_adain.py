"""AdaIN style transfer for GTTA's style-transfer variant (``strategies/gtta.py``, ``style_transfer``).

A frozen VGG-19 encoder (a 1x1 input conv, then VGG up to relu4_1, reflect padding; the
"normalized VGG" of the AdaIN literature) and a trained decoder back to an image in [0, 1]. The
network follows the one in the GTTA authors' code (mariodoebler/test-time-adaptation,
``classification/models/style_transfer.py``):

- style statistics are taken at two places: after the encoder's first two convolutions (64
  channels, full resolution; "shallow") and at relu4_1 (512 channels, 1/8 resolution; "deep"):
  per image and channel the spatial mean and (unbiased) standard deviation;
- transfer: the deep features are re-normalized to a style's statistics (AdaIN), decoded up to
  the last full-resolution block, the shallow features re-normalized the same way are added (a
  skip connection), and the rest of the decoder makes the image;
- training loss of the decoder: content = MSE(deep features of the generated image, the AdaIN
  target features); style = MSE of the generated image's shallow and deep means and standard
  deviations against the style's; the total is content + 0.1 style.

Checkpoints (``torch.load(weights_only=True)``): the VGG file is a state_dict in the layout of the
authors' ``vgg_normalized.pth`` (``nn.Sequential`` indices; only the layers up to relu4_1 are read,
later ones may be present), the decoder file ``{"decoder": state_dict}`` (as the authors save it)
or the bare state_dict. The blocks' channel counts are read from the VGG file (VGG's 64/128/256/512;
the tests use narrower random ones); the decoder must match them.
"""
import os

import torch
from torch import nn

from cl import io
from cl.errors import CheckpointError, ConfigError

EPS = 1e-5              # added to the standard deviations in AdaIN (style_transfer.py AdaIN eps)
STYLE_WEIGHT = 0.1      # loss = content + 0.1 style (methods/gtta.py, style_transfer.py pretrain_adain)
SHALLOW = 5             # encoder[:5]: the two 64-channel convolutions with their ReLUs
SKIP = 17               # decoder[:17]: up to the third upsampling, where the shallow features are added


def _conv(c_in, c_out, k=3):
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, padding_mode="reflect")


VGG_WIDTHS = (64, 128, 256, 512)     # channels of VGG-19's blocks 1-4
WIDTH_KEYS = ("1.weight", "6.weight", "11.weight", "20.weight")   # the first conv of each block in the VGG file


def make_encoder(widths=VGG_WIDTHS):
    """VGG-19 (normalized) up to relu4_1; module indices as in the VGG checkpoint. ``widths``: the
    blocks' channels (VGG's own; narrower ones only for tests, read from the checkpoint)."""
    c1, c2, c3, c4 = widths
    relu, pool = (lambda: nn.ReLU(inplace=True)), (lambda: nn.MaxPool2d(2, 2))
    return nn.Sequential(
        _conv(3, 3, 1), _conv(3, c1), relu(), _conv(c1, c1), relu(), pool(),
        _conv(c1, c2), relu(), _conv(c2, c2), relu(), pool(),
        _conv(c2, c3), relu(), _conv(c3, c3), relu(), _conv(c3, c3), relu(), _conv(c3, c3), relu(), pool(),
        _conv(c3, c4), relu())


def make_decoder(widths=VGG_WIDTHS):
    """relu4_1 features -> image in [0, 1] (three nearest-neighbour upsamplings)."""
    c1, c2, c3, c4 = widths
    relu, up = (lambda: nn.ReLU(inplace=True)), (lambda: nn.Upsample(scale_factor=2, mode="nearest"))
    return nn.Sequential(
        _conv(c4, c3), relu(), up(),
        _conv(c3, c3), relu(), _conv(c3, c3), relu(), _conv(c3, c3), relu(), _conv(c3, c2), relu(), up(),
        _conv(c2, c2), relu(), _conv(c2, c1), relu(), up(),
        _conv(c1, c1), relu(), _conv(c1, 3), nn.Sigmoid())


def moments(f):
    """Per image and channel: (spatial mean, unbiased spatial standard deviation), each [B, C]."""
    return f.mean(dim=(2, 3)), f.std(dim=(2, 3))


def adain(f, style_mean, style_std):
    """Re-normalize features ``f`` [B, C, H, W] to the style statistics [B, C] (std already + EPS)."""
    mean_c = f.mean(dim=(2, 3), keepdim=True)
    std_c = f.std(dim=(2, 3), keepdim=True) + EPS
    return (f - mean_c) / std_c * style_std[:, :, None, None] + style_mean[:, :, None, None]


class MomentsBuffer:
    """The style statistics of the images seen, newest last, at most ``size`` per layer:
    ``layers[k] = [means [N, C_k], stds [N, C_k]]`` for k = 0 (shallow), 1 (deep)."""

    def __init__(self, size, device="cpu"):
        self.size = int(size)
        self.layers = [[torch.empty(0, device=device), torch.empty(0, device=device)] for _ in range(2)]

    def __len__(self):
        return len(self.layers[0][0])

    def add(self, stats):
        """Append [(means, stds) shallow, (means, stds) deep]; keep the newest ``size`` rows."""
        for layer, (m, s) in zip(self.layers, stats):
            layer[0] = torch.cat([layer[0], m])[-self.size:]
            layer[1] = torch.cat([layer[1], s])[-self.size:]

    def pick(self, k, idx):
        """Style (mean, std + EPS) of layer ``k`` for the buffer rows ``idx``."""
        return self.layers[k][0][idx], self.layers[k][1][idx] + EPS

    def state(self):
        return [[m, s] for m, s in self.layers]

    def load(self, state):
        self.layers = [[m, s] for m, s in state]


class StyleTransfer(nn.Module):
    """Frozen encoder + trainable decoder; ``decoder_optimizer`` is built by the caller."""

    def __init__(self, widths=VGG_WIDTHS):
        super().__init__()
        self.encoder = make_encoder(widths).requires_grad_(False)
        self.decoder = make_decoder(widths)

    def encode(self, x):
        shallow = self.encoder[:SHALLOW](x)
        return shallow, self.encoder[SHALLOW:](shallow)

    @torch.no_grad()
    def style_of(self, x):
        """[(means, stds) shallow, (means, stds) deep] of the images ``x``."""
        return [moments(f) for f in self.encode(x)]

    def transfer(self, x, buffer, idx_deep, idx_shallow, with_loss=False):
        """Images ``x`` in the styles of buffer rows ``idx_deep`` (deep layer) / ``idx_shallow``
        (shallow layer); with ``with_loss`` also the decoder's loss (content + 0.1 style)."""
        shallow, deep = self.encode(x)
        mean_d, std_d = buffer.pick(1, idx_deep)
        target = adain(deep, mean_d, std_d)
        out = self.decoder[:SKIP](target)
        mean_s, std_s = buffer.pick(0, idx_shallow)
        image = self.decoder[SKIP:](out + adain(shallow, mean_s, std_s))
        if not with_loss:
            return image
        g_shallow, g_deep = self.encode(image)
        (gm_s, gs_s), (gm_d, gs_d) = moments(g_shallow), moments(g_deep)
        mse = nn.functional.mse_loss
        content = mse(g_deep, target)
        style = mse(gm_s, mean_s) + mse(gm_d, mean_d) + mse(gs_s, std_s) + mse(gs_d, std_d)
        return image, content + STYLE_WEIGHT * style


def _read_state(path, option, what, key=None, how_to_fix=""):
    """The state_dict of tensors in the checkpoint ``path``; a ConfigError naming ``option`` otherwise."""
    try:
        obj = io.torch_load(path)
    except CheckpointError as e:
        raise ConfigError(f"strategy.{option}: {e} {how_to_fix}") from None
    if isinstance(obj, dict) and key is not None and isinstance(obj.get(key), dict):
        obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"strategy.{option}: {path} does not hold a state_dict of tensors (the {what}). {how_to_fix}")
    return obj


def _load_into(module, state, path, option, what, how_to_fix):
    """Copy ``state`` into ``module``: every tensor of ``module`` must be there with its shape (extra
    entries, e.g. VGG's layers after relu4_1, are ignored); a ConfigError naming ``option`` otherwise."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        detail = (f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}" if missing
                  else f"wrong shapes: {', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
        raise ConfigError(f"strategy.{option}: {path} is not the {what} GTTA's style transfer expects ({detail}). "
                          f"{how_to_fix}")
    module.load_state_dict({k: state[k] for k in own})


VGG_HELP = ("Pass the normalized VGG-19 weights of AdaIN (vgg_normalized.pth of the GTTA authors' checkpoints: a "
            "state_dict of the nn.Sequential layers, at least 0..20, up to relu4_1), or set "
            "strategy.style_transfer=false.")
DECODER_HELP = ("Pass a decoder saved by a run with the same VGG file (written to strategy.decoder_checkpoint after "
                "pre-training), or a path that does not exist yet to pre-train one on the source data there.")


def build_style_transfer(vgg_path, decoder_path, pretrain_steps):
    """The network with the encoder loaded; the decoder loaded when ``decoder_path`` exists.
    Returns (network, whether the decoder still needs pre-training). The modules are built without
    drawing from the global random generator (their initial weights are replaced or trained)."""
    if not vgg_path:
        raise ConfigError(f"strategy.style_transfer=true needs strategy.vgg_checkpoint. {VGG_HELP}")
    vgg = _read_state(vgg_path, "vgg_checkpoint", "VGG encoder", how_to_fix=VGG_HELP)
    if not all(k in vgg and vgg[k].dim() == 4 for k in WIDTH_KEYS):
        raise ConfigError(f"strategy.vgg_checkpoint: {vgg_path} is not the VGG encoder GTTA's style transfer expects "
                          f"(no 4-d convolution weights {', '.join(WIDTH_KEYS)}). {VGG_HELP}")
    widths = tuple(int(vgg[k].shape[0]) for k in WIDTH_KEYS)
    with torch.random.fork_rng(devices=[]):
        net = StyleTransfer(widths)
    _load_into(net.encoder, vgg, vgg_path, "vgg_checkpoint", "VGG encoder", VGG_HELP)
    if decoder_path and os.path.exists(decoder_path):
        dec = _read_state(decoder_path, "decoder_checkpoint", "AdaIN decoder", key="decoder", how_to_fix=DECODER_HELP)
        _load_into(net.decoder, dec, decoder_path, "decoder_checkpoint", "AdaIN decoder", DECODER_HELP)
        return net, False
    if pretrain_steps < 1:
        raise ConfigError(f"strategy.decoder_checkpoint {decoder_path or '(empty)'} does not exist and "
                          f"strategy.pretrain_steps_adain is {pretrain_steps}, so there is no decoder. Pass an "
                          "existing decoder checkpoint or set strategy.pretrain_steps_adain >= 1 to pre-train one on "
                          "the source.")
    return net, True
