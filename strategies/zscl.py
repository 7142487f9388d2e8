"""ZSCL: continual fine-tuning of CLIP with distillation towards the zero-shot model on reference
data, a weight ensemble and an L2 pull.

Zheng et al., "Preventing Zero-Shot Transfer Degradation in Continual Learning of Vision-Language
Models", ICCV 2023 (arXiv 2303.06628); code Thunderbeee/ZSCL. Defaults are ``mtil/scripts/ZSCL.sh``
(``--method ZSCL --image_loss --text_loss --we --avg_freq 100 --l2 1 --ls 0.2 --iterations 1000
--ref-dataset ImageNet --ref-sentences conceptual_captions``) over ``mtil/src/args.py``; the loss is
``mtil/src/models/finetune.py`` and ``helpers.distillation``. On top of ``clip_finetune`` (per task:
AdamW, cosine schedule, CE with label smoothing on the task's class prompts), each step adds

    T   = teacher text embeddings of the reference sentences (unit, frozen)
    z_s = s * student_image(ref images) @ T^T,  z_t = s * teacher_image(ref images) @ T^T
    L  += KD(z_t, z_s)            (image -> text, ``--image_loss``)
        + KD(z_t^T, z_s^T)        (text -> image, ``--text_loss``: the same matrix, transposed)
    KD(t, s) = CE(s / tau, softmax(t / tau)) * tau^2, mean over rows, tau = 2 (``--T 2``)

where s = exp(logit_scale). As in finetune.py, both terms compare the *student's image* embeddings
against the *teacher's* text embeddings (the student's text tower is kept close by the L2 pull and the
weight ensemble, not by a text-side distillation term). The teacher is the initial (zero-shot) model
(``--ref-model`` unset); ``ref_model: previous`` uses the model at the start of each task (LwF, see
clip_lwf). Reference images: ``ref_images`` = a folder of images (the authors: ImageNet's training
set), read lazily at the model's image size, or ``current`` (the current task's training images,
without augmentation). Reference sentences: ``ref_texts`` = Conceptual Captions' validation CSV as
ZSCL reads it (tab-separated, column ``title``; mtil/src/datasets/cc.py), a .txt file with one
sentence per line, or ``current`` (the current task's class prompts, first template).
"""
import csv
import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.errors import ConfigError, DataError
from cl.registry import STRATEGIES
from scenarios.image_files import IMAGE_EXTENSIONS, ImageFiles
from strategies.clip_finetune import CLIPFinetune, CLIPFinetuneConfig

REF_MODELS = ("initial", "previous")


def soft_distillation(teacher_logits, student_logits, temperature=2.0):
    """ZSCL ``helpers.distillation``: CE(student / T, softmax(teacher / T)) * T^2, mean over rows."""
    p = F.softmax(teacher_logits / temperature, dim=1)
    return F.cross_entropy(student_logits / temperature, p) * temperature ** 2


@dataclass
class ZSCLConfig(CLIPFinetuneConfig):
    name: str = "zscl"
    ref_model: str = "initial"        # teacher: the zero-shot model (ZSCL.sh sets no --ref-model) | previous
    ref_images: str = ""              # ZSCL.sh --ref-dataset ImageNet: a folder of images (e.g. imagenet/train) | current
    ref_texts: str = ""               # ZSCL.sh --ref-sentences conceptual_captions: .csv (column title) / .txt | current
    ref_batch_size: int = 0           # reference images per step (0: batch_size; finetune.py uses args.batch_size)
    image_loss: bool = True           # ZSCL.sh --image_loss
    text_loss: bool = True            # ZSCL.sh --text_loss
    temperature: float = 2.0          # args.py --T 2.0
    weight_ensemble_every: int = 100  # ZSCL.sh --we --avg_freq 100
    l2: float = 1.0                   # ZSCL.sh --l2 1


def read_sentences(path):
    """Reference sentences: ZSCL's Conceptual Captions CSV (tab-separated, column ``title``) or a
    .txt file (one sentence per line)."""
    if not os.path.isfile(path):
        raise DataError(f"strategy.ref_texts: file '{path}' not found. Give Conceptual Captions' "
                        "Validation_GCC-1.1.0-Validation_output.csv (mtil/gather_cc.py in the ZSCL repository makes it) "
                        "or a .txt file with one sentence per line.")
    if path.endswith((".csv", ".tsv")):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows and "title" not in rows[0]:
            raise DataError(f"{path} has no 'title' column (columns: {list(rows[0])}); ZSCL reads the captions "
                            "from the 'title' column of a tab-separated file.")
        texts = [str(r["title"]) for r in rows]
    else:
        with open(path, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    if not texts:
        raise DataError(f"strategy.ref_texts: '{path}' holds no sentences.")
    return texts


def image_folder(path, size):
    """Every image file under ``path`` (recursively, sorted) as lazily decoded ImageFiles at ``size``."""
    if not os.path.isdir(path):
        raise DataError(f"strategy.ref_images: folder '{path}' not found (the authors use ImageNet's training set, "
                        "e.g. .../imagenet/train). Set it to a folder of images, or to 'current'.")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise DataError(f"strategy.ref_images: no image files under '{path}'.")
    return ImageFiles(paths, torch.zeros(len(paths), dtype=torch.long), resize=size, crop=size)


@STRATEGIES.register("zscl")
class ZSCL(CLIPFinetune):
    """CLIP fine-tuning + image/text distillation to the zero-shot model on reference data + weight ensemble + L2."""

    Config = ZSCLConfig

    def __init__(self, model, cfg, **kw):
        super().__init__(model, cfg, **kw)
        if cfg.ref_model not in REF_MODELS:
            raise ConfigError(f"strategy.ref_model must be one of {', '.join(REF_MODELS)}, got '{cfg.ref_model}'.")
        for key in ("ref_images", "ref_texts"):
            if not getattr(cfg, key):
                raise ConfigError(
                    f"{type(self).__name__} distils on reference data and strategy.{key} is not set. The authors use "
                    + ("ImageNet's training images (ZSCL.sh --ref-dataset ImageNet): strategy.ref_images=/path/to/imagenet/train"
                       if key == "ref_images" else
                       "Conceptual Captions' validation captions (ZSCL.sh --ref-sentences conceptual_captions): "
                       "strategy.ref_texts=/path/to/Validation_GCC-1.1.0-Validation_output.csv")
                    + f"; or strategy.{key}=current to use the current task's "
                    + ("training images." if key == "ref_images" else "class prompts."))
        if not cfg.image_loss and not cfg.text_loss:
            raise ConfigError("zscl with image_loss=false and text_loss=false distils nothing; use clip_finetune.")
        self.teacher, self.ref_iter, self.ref_text_emb = None, None, None
        self.ref_folder = image_folder(cfg.ref_images, self.clip.image_size) if cfg.ref_images != "current" else None
        self.ref_sentences = read_sentences(cfg.ref_texts) if cfg.ref_texts != "current" else None

    def warm_up(self, source):
        if self.cfg.ref_model == "initial":
            self.teacher = self._frozen_copy()

    def _frozen_copy(self):
        t = copy.deepcopy(self.clip).eval()
        t.requires_grad_(False)
        return t

    def before_experience(self, exp):
        super().before_experience(exp)
        if self.cfg.ref_model == "previous":
            self.teacher = self._frozen_copy()          # lwf.sh: --ref-model = the previous task's checkpoint
        data = exp.train.with_transform(None) if self.ref_folder is None else self.ref_folder
        seed = int(torch.randint(2**31 - 1, (1,)))      # the runner reseeds per experience: resumable
        self.ref_iter = self._cycle(data, self.cfg.ref_batch_size or self.cfg.batch_size, seed)
        with torch.no_grad():
            if self.ref_sentences is None:
                tokens = self.clip.prompt_tokens[self.clip.first_prompt[self.classes] + self.cfg.template_index]
            else:
                tokens = self.clip.tokenize(self.ref_sentences)
            self.ref_text_emb = self.teacher.encode_text(tokens)

    def _cycle(self, data, batch_size, seed):
        """Reference batches forever: shuffled passes over ``data`` (finetune.py re-iterates its loader)."""
        g = torch.Generator().manual_seed(seed)
        device = self.clip.prompt_tokens.device
        while True:
            for batch in data.batches(batch_size, shuffle=True, generator=g, device=device):
                yield batch.x

    def distillation_loss(self, ref_x):
        """Image->text and text->image distillation of the student's image tower (see module docstring)."""
        with torch.no_grad():
            t_img = self.teacher.encode_image(ref_x)
        s_img = self.clip.encode_image(ref_x)
        scale = self.clip.scale
        z_s = scale * s_img @ self.ref_text_emb.t()
        z_t = scale * t_img @ self.ref_text_emb.t()
        loss = z_s.new_zeros(())
        if self.cfg.image_loss:
            loss = loss + soft_distillation(z_t, z_s, self.cfg.temperature)
        if self.cfg.text_loss:
            loss = loss + soft_distillation(z_t.t(), z_s.t(), self.cfg.temperature)
        return loss

    def loss(self, batch):
        return super().loss(batch) + self.distillation_loss(next(self.ref_iter))

    def after_experience(self, exp):
        super().after_experience(exp)
        self.ref_iter = None                            # releases the reference loader
