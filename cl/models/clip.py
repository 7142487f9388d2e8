"""CLIP image classifiers through ``open_clip`` (optional extra ``clip``): the classifier's weights are
the text embeddings of the class names put into prompt templates (zero-shot head).

``model.name=clip`` with ``model.args.arch`` any open_clip architecture (``open_clip.list_models()``,
e.g. ``ViT-B-16``; ``local-dir:PATH`` / ``hf-hub:ORG/REPO`` work too) and ``model.args.pretrained``:

- ``null`` (default): random initialisation (tests; nothing is downloaded);
- a tag (``openai``, ``laion2b_s34b_b88k``, ... see ``open_clip.list_pretrained_tags_by_model(arch)``):
  downloaded by open_clip (needs internet or open_clip's cache);
- a file path: a local open_clip / OpenAI state dict, loaded by open_clip with ``weights_only=True``.

The class names (and, per class, the prompt templates) come from the scenario (``Scenario.class_names``
/ ``class_templates``; MTIL gives each dataset its own templates); ``model.args.templates`` overrides
the templates of every class. The head of a class is the normalized mean of its normalized prompt
embeddings (CLIP's and ZSCL's ``zeroshot_classifier``, mtil/src/models/evaluation.py). Inputs are
images in [0, 1]; the model converts grey to RGB, resizes to the architecture's image size (bicubic)
and normalizes with open_clip's mean/std, so every scenario and augmentation works unchanged.

``cl-test-tiny-clip`` (``open_clip_configs/``, registered with ``open_clip.add_model_config``) is a
~0.8M-parameter CLIP for tests and CPU smoke runs: its outputs mean nothing until trained.
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from cl.registry import MODELS

__all__ = ["CLIPClassifier", "clip", "clip_of", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES = ["a photo of a {}."]     # CLIP's single template (ZSCL src/templates/simple_template.py)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "open_clip_configs")
_TEXT_CHUNK = 512                           # prompts per text-encoder call when building a head without grad


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise ConfigError("model.name=clip needs the open_clip package: pip install 'cl-platform[clip]' "
                          "(or pip install open_clip_torch).") from None
    if CONFIG_DIR not in {str(p) for p in open_clip.factory._MODEL_CONFIG_PATHS}:
        open_clip.add_model_config(CONFIG_DIR)
    return open_clip


class CLIPClassifier(nn.Module):
    """An open_clip model plus the tokenized class prompts: ``forward(x)`` gives logits over the classes.

    x: float images [B, C, H, W] in [0, 1] -> logits [B, num_classes] = exp(logit_scale) *
    cos(image embedding, class embedding). Parts a strategy can use: ``encode_image``, ``encode_text``,
    ``tokenize``, ``class_embeddings(classes, template_index)``, ``scale`` and, for prompt tuning
    (CoOp/TPT), ``enable_context(init_text)`` which makes the first words of every class prompt a
    learned parameter ``context``.

    The head (all classes, all templates) is cached while no text-side parameter changes and no
    gradient is needed; in training mode with gradients it is recomputed on every call.
    """

    def __init__(self, clip_model, tokenizer, class_names, class_templates, image_size, mean, std):
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.class_names = [str(n) for n in class_names]
        self.class_templates = [list(t) for t in class_templates]
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        prompts, owner, first = [], [], []
        for c, (name, templates) in enumerate(zip(self.class_names, self.class_templates)):
            first.append(len(prompts))
            for t in templates:
                prompts.append(t.format(name))
                owner.append(c)
        self.register_buffer("prompt_tokens", tokenizer(prompts), persistent=False)
        self.register_buffer("prompt_class", torch.tensor(owner, dtype=torch.long), persistent=False)
        self.register_buffer("first_prompt", torch.tensor(first, dtype=torch.long), persistent=False)
        self.register_buffer("n_templates", torch.tensor([len(t) for t in self.class_templates]), persistent=False)
        self.register_parameter("context", None)
        self._text_params = [p for n, p in clip_model.named_parameters()
                             if not n.startswith("visual.") and not n.startswith("logit_")]
        self._head, self._head_key = None, None

    @property
    def num_classes(self):
        return len(self.class_names)

    # ------------------------------------------------------------------ encoders
    def tokenize(self, texts):
        """list of strings -> token ids [N, context_length] on the model's device."""
        return self.tokenizer(list(texts)).to(self.prompt_tokens.device)

    def preprocess(self, x):
        """[B, C, H, W] in [0, 1] -> the tensor open_clip's image tower expects (RGB, size, mean/std)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0, 1)
        return (x - self.mean) / self.std

    def encode_image(self, x, normalize=True):
        """Image embeddings [B, D] (unit length when ``normalize``)."""
        f = self.clip.encode_image(self.preprocess(x))
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, tokens, normalize=True):
        """Text embeddings [N, D] of token ids [N, L] (unit length when ``normalize``); without
        gradients, long lists go through the text tower in chunks."""
        if torch.is_grad_enabled() or len(tokens) <= _TEXT_CHUNK:
            f = self.clip.encode_text(tokens)
        else:
            f = torch.cat([self.clip.encode_text(tokens[i:i + _TEXT_CHUNK]) for i in range(0, len(tokens), _TEXT_CHUNK)])
        return F.normalize(f, dim=-1) if normalize else f

    @property
    def scale(self):
        """exp(logit_scale): CLIP's learned temperature (100 for the OpenAI weights)."""
        return self.clip.logit_scale.exp()

    # ------------------------------------------------------------------ class embeddings
    def class_embeddings(self, classes=None, template_index=None):
        """Unit class embeddings [len(classes), D] (default: every class).

        With a learned ``context``: the context prompt of each class. Otherwise ``template_index=k``
        uses the k-th template of each class only (ZSCL trains with ``dataset.template``, the first);
        ``None`` averages all templates (normalize each, mean, normalize: the zero-shot head)."""
        classes = torch.arange(self.num_classes, device=self.prompt_tokens.device) if classes is None else \
            torch.as_tensor(classes, dtype=torch.long, device=self.prompt_tokens.device)
        if self.context is not None:
            return F.normalize(self._encode_with_context(self.context_tokens[classes]), dim=-1)
        if template_index is not None:
            if bool((self.n_templates[classes] <= template_index).any()):
                raise ConfigError(f"template_index={template_index} but some classes have fewer templates.")
            return self.encode_text(self.prompt_tokens[self.first_prompt[classes] + template_index])
        wanted = torch.zeros(self.num_classes, dtype=torch.bool, device=classes.device)
        wanted[classes] = True
        rows = torch.nonzero(wanted[self.prompt_class]).flatten()
        emb = self.encode_text(self.prompt_tokens[rows])
        owner = self.prompt_class[rows]
        summed = torch.zeros(self.num_classes, emb.shape[1], dtype=emb.dtype, device=emb.device).index_add_(0, owner, emb)
        return F.normalize(summed[classes], dim=-1)

    def head(self):
        """The zero-shot head [num_classes, D]; cached until a text-side parameter changes."""
        params = self._text_params + ([self.context] if self.context is not None else [])
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if needs_grad:
            self._head, self._head_key = None, None
            return self.class_embeddings()
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._head is None or key != self._head_key:
            with torch.no_grad():
                self._head = self.class_embeddings()
            self._head_key = key
        return self._head

    def train(self, mode=True):
        self._head, self._head_key = None, None   # weights may change from here on
        return super().train(mode)

    def forward(self, x):
        img = self.encode_image(x)
        logits = self.scale * img @ self.head().t().to(img.dtype)
        bias = getattr(self.clip, "logit_bias", None)
        return logits + bias if bias is not None else logits

    # ------------------------------------------------------------------ learned prompt context (CoOp, TPT)
    def enable_context(self, init_text="a photo of a"):
        """Make the words of ``init_text`` a learned context shared by all classes: the prompt of class
        c becomes "<init_text> <name>." with the init words' token embeddings as a parameter
        ``context`` [n_ctx, width] (TPT ``PromptLearner`` with ``ctx_init``, class token at the end).
        Returns the parameter."""
        if not all(hasattr(self.clip, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
            raise ConfigError(f"Prompt tuning needs an open_clip CLIP whose text tower is its own transformer "
                              f"(token_embedding, transformer, ln_final); {type(self.clip).__name__} has another "
                              "text tower (e.g. a Hugging Face model). Choose a standard CLIP architecture.")
        init = self.tokenize([init_text])[0]
        n_ctx = int(init.argmax()) - 1                 # words between the start and the end token
        if n_ctx < 1:
            raise ConfigError(f"The prompt context init '{init_text}' has no words; give e.g. 'a photo of a'.")
        with torch.no_grad():
            ctx = self.clip.token_embedding(init[1:1 + n_ctx]).detach().clone()
        self.register_buffer("context_tokens", self.tokenize([f"{init_text} {n}." for n in self.class_names]),
                             persistent=False)
        self.context = nn.Parameter(ctx)
        self.context_init = ctx.clone()
        self._head, self._head_key = None, None
        return self.context

    def _encode_with_context(self, tokens):
        """open_clip ``CLIP.encode_text`` with token positions 1..n_ctx replaced by ``context``."""
        m = self.clip
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast)
        n = self.context.shape[0]
        ctx = self.context.to(cast).unsqueeze(0).expand(len(tokens), -1, -1)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + n:]], dim=1)
        x = x + m.positional_embedding.to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        from open_clip.transformer import text_global_pool
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return x


def clip_of(model, who):
    """The CLIPClassifier ``model`` is, or a ConfigError saying that ``who`` needs one."""
    if isinstance(model, CLIPClassifier):
        return model
    inner = getattr(model, "net", None)
    if isinstance(inner, CLIPClassifier):
        raise ConfigError(f"{who} got a CLIP model wrapped in model.normalize; the CLIP model normalizes its input "
                          "itself with open_clip's mean/std. Remove model.normalize from the config.")
    raise ConfigError(f"{who} needs a CLIP model (model.name=clip with model.args.arch=<open_clip architecture>, "
                      f"pip install 'cl-platform[clip]'), got {type(model).__name__}.")


def _load(open_clip, arch, pretrained, cache_dir):
    kwargs = dict(pretrained_text=False)       # never download a text tower's base weights by surprise
    if isinstance(pretrained, str) and not os.path.isfile(pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(arch.replace("/", "-"), pretrained)
        if tag_cfg and tag_cfg.get("quick_gelu") and not arch.endswith("quickgelu"):
            kwargs["force_quick_gelu"] = True   # OpenAI weights were trained with QuickGELU
    try:
        return open_clip.create_model(arch, pretrained=pretrained or None, cache_dir=cache_dir, **kwargs)
    except FileNotFoundError as e:
        raise ConfigError(f"open_clip could not find '{arch}': {e}") from None
    except RuntimeError as e:
        msg = str(e)
        if "not found" in msg and "Model config" in msg:
            raise ConfigError(f"open_clip has no architecture '{arch}'. List them with open_clip.list_models(); "
                              "a config of your own is 'local-dir:PATH' (a folder with open_clip_config.json).") from None
        if pretrained:
            raise ConfigError(
                f"open_clip could not load pretrained='{pretrained}' for '{arch}' ({msg.splitlines()[0]}). Tags for this "
                f"architecture: {open_clip.list_pretrained_tags_by_model(arch.replace('/', '-'))}. Without internet, "
                "download the weights elsewhere and pass model.args.pretrained=/path/to/weights.bin.") from None
        raise


@MODELS.register("clip")
def clip(num_classes, input_shape, arch="ViT-B-16", pretrained=None, class_names=None, class_templates=None,
         templates=None, cache_dir=None):
    """open_clip CLIP as a zero-shot classifier over the scenario's class names (see module docstring).

    ``pretrained``: None (random), True (the architecture's ``openai`` tag, else its first tag), a tag,
    or a local weights file. ``templates``: prompt templates for every class (overrides the scenario's).
    """
    open_clip = _open_clip()
    if not class_names:
        raise ConfigError("model.name=clip builds its classifier from class names, but the scenario gives none. "
                          "Use a scenario whose dataset has class names (class_split, mtil, ...), or pass "
                          "model.args.class_names=[...] (one per label).")
    if len(class_names) != num_classes:
        raise ConfigError(f"model.args.class_names has {len(class_names)} names but the scenario has {num_classes} "
                          "classes; give one name per label.")
    if pretrained is True:
        tags = open_clip.list_pretrained_tags_by_model(arch.replace("/", "-"))
        if not tags:
            raise ConfigError(f"open_clip lists no pretrained weights for '{arch}'; pass model.args.pretrained=PATH.")
        pretrained = "openai" if "openai" in tags else tags[0]
    if templates:
        per_class = [list(templates)] * num_classes
    elif class_templates:
        per_class = [list(t) if t else DEFAULT_TEMPLATES for t in class_templates]
    else:
        per_class = [DEFAULT_TEMPLATES] * num_classes
    bad = sorted({t for ts in per_class for t in ts if "{}" not in t})
    if bad:
        raise ConfigError(f"Prompt templates must contain '{{}}' where the class name goes; these do not: {bad[:3]}.")
    net = _load(open_clip, arch, pretrained, cache_dir)
    pp = getattr(net.visual, "preprocess_cfg", {}) or {}
    size = pp.get("size", getattr(net.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = pp.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = pp.get("std", open_clip.OPENAI_DATASET_STD)
    tokenizer = open_clip.get_tokenizer(arch)
    model = CLIPClassifier(net, tokenizer, class_names, per_class, size, mean, std)
    model.loaded_pretrained = bool(pretrained)
    return model
