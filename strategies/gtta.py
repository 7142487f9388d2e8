"""GTTA: gradual test-time adaptation by self-training with source replay mixed into the target.

R. A. Marsden, M. Döbler, B. Yang, "Gradual Test-Time Adaptation by Self-Training and Style
Transfer", 2022 (arXiv:2208.07736). Follows the authors' code (mariodoebler/test-time-adaptation
``classification/methods/gtta.py``), in its mixup variant.

Every weight and bias is trained, the model runs in train mode and BatchNorm uses the batch's
statistics. Per test batch x (``steps`` times; pseudo-labels on the first):
  1. pseudo-labels: y = argmax p(x) (no gradient); the moving average c <- 0.9 c + 0.1 mean max p
     (from 0.9); samples with max p < sqrt(c) get no label (ignored in the loss);
  2. a labelled source batch (x_s, y_s) cut to len(x); each source image is mixed with the test
     image whose prediction is most similar to its own (argmax_j p(x_s) . p(x_j)):
     x_mix = ``lambda_mixup`` x_j + (1 - ``lambda_mixup``) x_s; one step on CE(f(x_mix), y_s);
  3. one step on CE(f(x), y) over the labelled test samples.
The returned prediction is f(x) of step 3 (after the source step, before the target step).
Source batches come from a seeded stream over the source (``strategies.tta_base.SourceStream``),
which, like the authors' loader iterator, continues over resets; ``warm_up`` opens it.

Style-transfer variant (``style_transfer=true``; the authors' ``cfgs/imagenet_c/gtta.yaml``
GTTA.USE_STYLE_TRANSFER True): step 2 replaces the mixup by AdaIN style transfer of the source
batch to the test style (``strategies._adain``: a frozen VGG-19 encoder up to relu4_1, a decoder):
  0. on the first step of each test batch: the per-image feature statistics of x are appended to
     a buffer of test styles (the newest ``moments_buffer_size`` images are kept; emptied by
     ``reset``), then the decoder takes ``steps_adain`` Adam steps (lr ``adain_lr``) on
     content + 0.1 style loss, each on the next source batch;
  2'. the next source batch, rendered in the styles of the newest buffer entries (source image i
     gets the style of the (i+1)-th newest test image; the whole source batch, as the authors,
     cut only when the buffer holds fewer images), is the input of the source step.
The encoder is loaded from ``vgg_checkpoint`` and never trained; the decoder from
``decoder_checkpoint``. When that file does not exist, ``warm_up`` pre-trains the decoder on the
source as the authors do: the statistics of the first ``moments_buffer_size`` source images (a
seeded order; whole batches) form the style pool, then ``pretrain_steps_adain`` Adam steps, each
on a source batch rendered in styles drawn at random from the pool (deep layer first, then the
shallow one, from torch's global generator); the decoder is then saved to
``decoder_checkpoint`` (when set). ``reset`` restores the decoder to its state after loading or
pre-training and empties the style buffer; the decoder's Adam state goes on (as the authors', whose
reset restores the models and the classifier's optimizer only). The style network runs in float32.

Defaults: ``cfgs/cifar10_c/gtta.yaml`` (Adam, lr 1e-5, batch 200; ImageNet-C: batch 64) and
``conf.py`` GTTA.LAMBDA_MIXUP 1/3, OPTIM.STEPS 1; style transfer: ``conf.py`` GTTA.STEPS_ADAIN 1,
GTTA.PRETRAIN_STEPS_ADAIN 20000, ``methods/gtta.py`` buffer size 100000 (also the number of
source images the pre-training reads), ``models/style_transfer.py`` decoder Adam lr 1e-4; the
authors' checkpoint files are ``<CKPT_DIR>/adain/vgg_normalized.pth`` and
``<CKPT_DIR>/adain/decoder_<dataset>.pth``.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl import io
from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies._adain import MomentsBuffer, build_style_transfer
from strategies.mean_teacher import weight_and_bias
from strategies.tta_base import SourceStream, source_subset, use_batch_statistics

SOURCE_SEED = 2025          # seed of the source stream's permutations
STYLE_POOL_SEED = 5025      # order in which the decoder's pre-training reads the source's styles
PRETRAIN_SEED = 6025        # seed of the pre-training's source stream
IGNORE = -1


@dataclass
class GTTAConfig(StrategyConfig):
    name: str = "gtta"
    optimizer: str = "adam"        # cfgs/cifar10_c/gtta.yaml OPTIM.METHOD Adam
    lr: float = 1e-5               # OPTIM.LR 1e-5
    batch_size: int = 200          # TEST.BATCH_SIZE 200 (ImageNet-C 64); also the source batch size
    eval_batch_size: int = 200
    lambda_mixup: float = 1 / 3    # conf.py GTTA.LAMBDA_MIXUP
    steps: int = 1                 # conf.py OPTIM.STEPS (pseudo-labels are refreshed every `steps`)
    # Style-transfer variant (cfgs/imagenet_c/gtta.yaml GTTA.USE_STYLE_TRANSFER True; conf.py default False)
    style_transfer: bool = False
    vgg_checkpoint: str = ""       # the authors' <CKPT_DIR>/adain/vgg_normalized.pth (state_dict, layers 0..20)
    decoder_checkpoint: str = ""   # <CKPT_DIR>/adain/decoder_<dataset>.pth; pre-trained and saved there if missing
    steps_adain: int = 1           # conf.py GTTA.STEPS_ADAIN: decoder steps per test batch
    pretrain_steps_adain: int = 20000   # conf.py GTTA.PRETRAIN_STEPS_ADAIN
    moments_buffer_size: int = 100000  # methods/gtta.py buffer_size: test styles kept (source styles pre-training uses)
    adain_lr: float = 1e-4         # models/style_transfer.py: Adam lr of the decoder


@STRATEGIES.register("gtta")
class GTTA(Strategy):
    """Self-training on filtered pseudo-labels + CE on source images mixed with similar test images
    (or rendered in the test style by AdaIN, ``style_transfer``)."""

    protocols = ("online",)

    Config = GTTAConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if not 0.0 <= cfg.lambda_mixup <= 1.0:
            raise ConfigError(f"strategy.lambda_mixup must be in [0, 1], got {cfg.lambda_mixup}.")
        if cfg.steps < 1:
            raise ConfigError(f"strategy.steps must be >= 1, got {cfg.steps}.")
        self.avg_conf = torch.tensor(0.9)
        self.source = None            # SourceStream
        self.style = self.styles = self.style_optimizer = None
        self.style_needs_pretraining = False
        if cfg.style_transfer:
            for key in ("steps_adain", "moments_buffer_size"):
                if getattr(cfg, key) < 1:
                    raise ConfigError(f"strategy.{key} must be >= 1, got {getattr(cfg, key)}.")
            if cfg.adain_lr <= 0:
                raise ConfigError(f"strategy.adain_lr must be > 0, got {cfg.adain_lr}.")
            self.style, self.style_needs_pretraining = build_style_transfer(
                cfg.vgg_checkpoint, cfg.decoder_checkpoint, cfg.pretrain_steps_adain)

    def configure_model(self):
        self.model.train()
        self.model.requires_grad_(True)
        use_batch_statistics(self.model)
        if self.style is not None:
            self.style.to(self.device)
            self.styles = MomentsBuffer(self.cfg.moments_buffer_size, self.device)

    def parameters_to_train(self):
        return [p for _, p in weight_and_bias(self.model)]

    def warm_up(self, source):
        """Open the labelled source stream that is replayed (mixed / style-transferred) with every
        test batch; pre-train the style decoder first when it has no checkpoint."""
        if source is None or len(source) == 0:
            raise ConfigError("gtta replays labelled source images with every test batch, but the scenario has no "
                              "source data. Use a scenario with source data (corruption_stream: "
                              "scenario.with_source=true).")
        self.source = SourceStream(source, self.cfg.batch_size, SOURCE_SEED)
        if self.style is not None:
            h, w = source.x.shape[-2:]
            if source.x.dim() != 4 or source.x.shape[1] != 3 or h % 8 or w % 8 or min(h, w) < 16:
                raise ConfigError(f"strategy.style_transfer=true needs RGB images whose height and width are multiples "
                                  f"of 8 and at least 16 (the VGG encoder halves them three times), got "
                                  f"{tuple(source.x.shape[1:])}. Use the mixup variant (style_transfer=false).")
            if self.style_needs_pretraining:
                self.pretrain_decoder(source)
                self.style_needs_pretraining = False
            self.style_optimizer = torch.optim.Adam(self.style.decoder.parameters(), lr=self.cfg.adain_lr)

    def pretrain_decoder(self, source):
        """Train the decoder on source images rendered in source styles drawn at random from the
        statistics of the first ``moments_buffer_size`` source images; save it to ``decoder_checkpoint``."""
        cfg, net, bs = self.cfg, self.style, self.cfg.batch_size
        pool = MomentsBuffer(len(source) + bs, self.device)
        for batch in source_subset(source, -1, STYLE_POOL_SEED).batches(bs, device=self.device):
            pool.add(net.style_of(batch.x))
            if len(pool) >= cfg.moments_buffer_size:
                break
        optimizer = torch.optim.Adam(net.decoder.parameters(), lr=cfg.adain_lr)
        stream = SourceStream(source, bs, PRETRAIN_SEED)
        for _ in range(cfg.pretrain_steps_adain):
            x = stream.next(self.device).x
            optimizer.zero_grad(set_to_none=True)
            idx_deep = torch.randint(len(pool), (len(x),))
            idx_shallow = torch.randint(len(pool), (len(x),))
            _, loss = net.transfer(x, pool, idx_deep, idx_shallow, with_loss=True)
            loss.backward()
            optimizer.step()
        if cfg.decoder_checkpoint:
            io.torch_save({"decoder": net.decoder.state_dict()}, cfg.decoder_checkpoint)

    def newest_styles(self, n):
        """Buffer rows for n images: image i gets the (i+1)-th newest test style."""
        n = min(n, len(self.styles))
        return n, -torch.arange(1, n + 1)

    def adapt_style(self, x):
        """Store the test batch's styles, then train the decoder ``steps_adain`` times on source batches."""
        self.styles.add(self.style.style_of(x))
        for _ in range(self.cfg.steps_adain):
            x_src = self.source.next(self.device).x
            n, idx = self.newest_styles(len(x_src))
            self.style_optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                _, loss = self.style.transfer(x_src[:n], self.styles, idx, idx, with_loss=True)
                loss.backward()
            self.style_optimizer.step()

    @torch.no_grad()
    def pseudo_labels(self, logits):
        """argmax labels; IGNORE where the confidence is below sqrt of its moving average."""
        conf, labels = torch.max(logits.softmax(dim=1), dim=1)
        self.avg_conf = 0.9 * self.avg_conf.to(conf.device) + (1 - 0.9) * conf.mean()
        labels = labels.clone()
        labels[torch.where(conf < torch.sqrt(self.avg_conf))] = IGNORE
        return labels

    @torch.no_grad()
    def source_input(self, x, logits):
        """The next labelled source batch, as the input of the source step: style-transferred to
        the newest test styles, or each image mixed with its most similar test image."""
        src = self.source.next(self.device)
        if self.style is not None:
            n, idx = self.newest_styles(len(src.x))
            return self.style.transfer(src.x[:n], self.styles, idx, idx), src.y[:n]
        lam = self.cfg.lambda_mixup
        x_src, y_src = src.x[:len(x)], src.y[:len(x)]
        with self.autocast():
            sim = torch.matmul(self.model(x_src).float().softmax(1), logits.softmax(1).T)
        return lam * x[torch.max(sim, dim=1)[1]] + (1 - lam) * x_src, y_src

    def forward_and_adapt(self, x):
        self.model.train()
        for step in range(self.cfg.steps):
            if step == 0 or self.style is None:        # the mixup compares with the current predictions
                with torch.no_grad(), self.autocast():
                    logits = self.model(x).float()
            if step == 0:
                labels = self.pseudo_labels(logits)
                if self.style is not None:
                    self.adapt_style(x)
            x_in, y_src = self.source_input(x, logits)
            with torch.enable_grad(), self.autocast():
                loss_src = F.cross_entropy(self.model(x_in).float(), y_src)
            self.optimize(loss_src)
            with torch.enable_grad(), self.autocast():
                logits = self.model(x).float()
                loss_trg = F.cross_entropy(logits, labels, ignore_index=IGNORE)
            self.optimize(loss_trg)
        return logits.detach()

    def reset(self):
        avg_conf, pos = self.avg_conf, self.source.pos if self.source is not None else 0
        style_opt = self.style_optimizer.state_dict() if self.style_optimizer is not None else None
        style_opt = copy.deepcopy(style_opt)
        super().reset()    # weights, optimizer, decoder, empty style buffer; c, the source stream and
        self.avg_conf = avg_conf           # the decoder's Adam state go on (authors)
        if self.source is not None:
            self.source.pos = pos
        if style_opt is not None:
            self.style_optimizer.load_state_dict(style_opt)

    def extra_state(self):
        out = {"avg_conf": self.avg_conf, "source_pos": self.source.pos if self.source is not None else 0}
        if self.style is not None:
            out["style"] = {"decoder": self.style.decoder.state_dict(), "moments": self.styles.state(),
                            "optimizer": self.style_optimizer.state_dict() if self.style_optimizer else {}}
        return out

    def load_extra_state(self, state):
        self.avg_conf = state["avg_conf"]
        if self.source is not None:
            self.source.pos = int(state["source_pos"])
        if self.style is not None:
            st = state["style"]
            self.style.decoder.load_state_dict(st["decoder"])
            self.styles.load(st["moments"])
            if self.style_optimizer is not None and st["optimizer"]:
                self.style_optimizer.load_state_dict(st["optimizer"])
