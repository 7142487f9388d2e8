"""MULTI-LANE: one pathway per task of summarised patch tokens, on a frozen ViT.

Paper: T. De Min, M. Mancini, S. Lathuilière, S. Roy, E. Ricci, "Less is more: Summarizing Patch
Tokens for efficient Multi-Label Class-Incremental Learning", CoLLAs 2024. Authors' code:
tdemin16/multi-lane (``multi_lane/blocks.py`` ``PreT_Attention``/``Block``,
``multi_lane/vision_transformer.py`` ``forward_features``/``forward_head``/``next_task``,
``multi_lane/engine.py``; defaults from ``multi_lane/configs/coco.py`` and ``configs/voc.py``).

The frozen ViT runs as usual on the image (no gradient). Next to it, each task ``t`` has a pathway:
a short sequence ``[CLS, s_1..s_S]`` (the ViT's own frozen [CLS] token and ``num_selectors`` learned
selector tokens). In every block, for every pathway:

1. the selectors (after the block's norm1) summarise the *detached* normalised patch tokens of the
   frozen pass by softmax attention: ``softmax(s P^T / sqrt(D)) P`` -- S summary tokens;
2. the block's frozen self-attention runs on ``[CLS, summaries]`` only, with the pathway's prefix
   prompts (``num_prompts`` key and value tokens of task t, in the first ``num_prompt_layers`` blocks)
   prepended to its keys and values;
3. drop and replace: the CLS output is kept, the summaries are dropped and the (normalised)
   selectors take their place in the residual branch; then the block's frozen MLP, as in a ViT block.

After the last block the final norm; each pathway's CLS feature is L2-normalised (``normalize
'pre-head'``) and goes through the one shared head. Training uses only the current task's pathway
and trains its selectors and prompts plus the head, with BCE (multi-label) or cross-entropy
(single-label CIL) on the current task's classes (``train_mask``; ``cl.multilabel.masked_bce``).
At prediction all pathways so far run side by side and each class takes its logit from the
pathway of the task that owns it (``head_mode 'concat'``), so inference costs grow with the number
of tasks (one extra (1 + S)-token sequence per task and block, plus the S x N summarisation).
When a task starts, its selectors and prompts are copied from the previous task's (``next_task``),
and a fresh Adam is built (``reinit_optimizer``).

Defaults (COCO, ``configs/coco.py``): Adam, lr 0.03 scaled by batch/256 as ``main.py`` does
(``unscale_lr`` False) -> 0.015 at batch 128; 30 epochs; 20 selectors; 20 prompts in the first 5
blocks; orthogonal init. VOC (``configs/voc.py``): batch 256, lr 0.05 (x 256/256), 10 selectors,
10 prompts: ``strategy.batch_size=256 strategy.lr=0.05 strategy.num_selectors=10 strategy.num_prompts=10``.
Schedule: ``engine.py`` builds ``CosineAnnealingLR(T_max=epochs)`` per task, stepped per epoch; the
configs' ``warmup_epochs 5`` is never read by it, and ``clip_grad 1.0`` / ``smoothing 0.1`` are parsed
but the training loop does not clip and ``BCEWithLogitsLoss`` is built without smoothing, so neither
is applied here (``grad_clip`` 0).

Differences: the authors' ViT-B/16 blocks have no LayerScale/q-k norms; here the timm block's own
modules are reused (``strategies._prompts.attention``), which equals their arithmetic on a plain
ViT. The pathway count is fixed at set-up (``num_tasks``, default: the stream's experiences), as
the code allocates ``num_tasks`` slots.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from cl.registry import STRATEGIES
from strategies._prompts import attention, mask_to_classes
from strategies.prompt_base import PromptConfig, PromptStrategy


@dataclass
class MultiLaneConfig(PromptConfig):
    name: str = "multi_lane"
    optimizer: str = "adam"           # configs/coco.py --opt adam, betas (0.9, 0.999), weight decay 0
    lr: float = 0.015                 # configs/coco.py lr 0.03 x batch 128 / 256 (main.py scaling); VOC 0.05
    batch_size: int = 128             # configs/coco.py (VOC: 256)
    epochs: int = 30                  # configs/coco.py and configs/voc.py
    grad_clip: float = 0.0            # clip_grad 1.0 is parsed but engine.py never clips (module docstring)
    num_selectors: int = 20           # configs/coco.py (VOC: 10)
    num_prompts: int = 20             # configs/coco.py (VOC: 10): prefix tokens per task and block
    num_prompt_layers: int = 5        # configs/coco.py and voc.py: prompts in the first 5 blocks
    prompt_init: str = "orthogonal"   # orthogonal | uniform (configs: orthogonal, for selectors and prompts)
    normalize: str = "pre-head"       # pre-head | none: L2-normalise each pathway's CLS before the head
    drop_and_replace: bool = True     # configs: --disable_dandr off
    cosine: bool = True               # engine.py: CosineAnnealingLR(T_max=epochs) per task, stepped per epoch
    num_tasks: int = 0                # pathways allocated (0: the stream's number of experiences)


@STRATEGIES.register("multi_lane")
class MultiLane(PromptStrategy):
    """Per-task pathways of selector tokens summarising the frozen ViT's patches; concatenated heads."""

    Config = MultiLaneConfig
    label_types = ("single", "multi")
    module_key = "lanes"
    needs_boundaries = ("each task trains its own pathway, started from the previous task's at the task "
                        "boundary (next_task in the authors' code); no task-free MULTI-LANE exists")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.cfg
        depth, dim = len(self.vit.blocks), self.vit.embed_dim
        n_tasks = c.num_tasks or self.stream.num_experiences
        if n_tasks < 1 or c.num_selectors < 1 or c.num_prompts < 0 or not 0 <= c.num_prompt_layers <= depth:
            raise ConfigError(f"multi_lane: need num_tasks >= 1 (got {n_tasks}; set strategy.num_tasks), num_selectors "
                              f">= 1 (got {c.num_selectors}), num_prompts >= 0 and num_prompt_layers in 0..{depth}.")
        if c.prompt_init not in ("orthogonal", "uniform") or c.normalize not in ("pre-head", "none"):
            raise ConfigError("multi_lane: prompt_init must be orthogonal|uniform and normalize pre-head|none, got "
                              f"{c.prompt_init!r} / {c.normalize!r}.")
        self.n_tasks = n_tasks
        self.lanes = nn.Module()
        self.lanes.selectors = nn.Parameter(self._init(torch.empty(n_tasks, c.num_selectors, dim)))
        layers = c.num_prompt_layers if c.num_prompts else 0
        # per prompted block: [2 (key, value), tasks, prompts, D] (blocks.py: [2, T, P, heads, head_dim])
        self.lanes.prompts = nn.ParameterList(
            [nn.Parameter(self._init(torch.empty(2, n_tasks, c.num_prompts, dim))) for _ in range(layers)])
        self.task_classes = []            # classes of each task begun (the pathway that owns each class)

    def _init(self, t):
        return nn.init.orthogonal_(t) if self.cfg.prompt_init == "orthogonal" else nn.init.uniform_(t, -1, 1)

    # ------------------------------------------------------------------ the pathways
    def pathway_logits(self, x, pathways):
        """Logits of every pathway in ``pathways`` (task indices): [len(pathways), B, C]."""
        vit, c = self.vit, self.cfg
        p = torch.as_tensor(pathways, device=x.device)
        with torch.no_grad():
            h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(self.normalize(x)))))
        T, B, D = len(pathways), len(h), h.shape[-1]
        cls = vit.cls_token.expand(T, B, 1, D)
        tokens = torch.cat([cls, self.lanes.selectors[p].unsqueeze(1).expand(T, B, -1, -1)], dim=2)
        for i, blk in enumerate(vit.blocks):
            with torch.no_grad():
                patches = blk.norm1(h)                                     # detached normalised tokens
            tn = blk.norm1(tokens)                                         # [T, B, 1 + S, D]
            if c.drop_and_replace or i == 0:
                sel = tn[:, :, 1:]
                w = torch.einsum("tbsd,bnd->tbsn", sel, patches).mul(D ** -0.5).softmax(-1)
                seq = torch.cat([tn[:, :, :1], torch.einsum("tbsn,bnd->tbsd", w, patches)], dim=2)
            else:
                seq = tn
            prefix = None
            if i < len(self.lanes.prompts):
                pr = self.lanes.prompts[i][:, p]                           # [2, T, P, D]
                pr = pr.unsqueeze(2).expand(-1, -1, B, -1, -1).flatten(1, 2)   # [2, T * B, P, D]
                prefix = (pr[0], pr[1])
            out = attention(blk.attn, seq.flatten(0, 1), prefix).view(T, B, -1, D)
            if c.drop_and_replace:                                         # keep CLS, put the selectors back
                out = torch.cat([out[:, :, :1], tn[:, :, 1:]], dim=2)
            tokens = tokens + blk.drop_path1(blk.ls1(out))
            tokens = tokens + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(tokens))))
            with torch.no_grad():
                h = blk(h)                                                 # the frozen pass
        feats = vit.norm(tokens)[:, :, 0]                                  # [T, B, D]
        if c.normalize == "pre-head":
            feats = F.normalize(feats, dim=-1)
        return vit.head(feats)

    # ------------------------------------------------------------------ training
    def before_experience(self, exp):
        if self.task >= self.n_tasks:
            raise ConfigError(f"multi_lane: experience {exp.index + 1} needs pathway {self.task + 1}, but only "
                              f"{self.n_tasks} were allocated; set strategy.num_tasks to the stream's number of tasks.")
        if self.task > 0:
            self.next_task()
        self.task_classes.append(list(exp.classes))
        super().before_experience(exp)                 # fresh optimizer after the copy, as engine.py

    @torch.no_grad()
    def next_task(self):
        """Task t's selectors and prompts start from task t-1's (vision_transformer.py/blocks.py next_task)."""
        t = self.task
        self.lanes.selectors[t] = self.lanes.selectors[t - 1]
        for pr in self.lanes.prompts:
            pr[:, t] = pr[:, t - 1]

    def lr_at(self, epoch):
        """torch CosineAnnealingLR(T_max=epochs, eta_min=0) at ``epoch``: lr (1 + cos(pi e / E)) / 2."""
        return self.cfg.lr * (1 + math.cos(math.pi * epoch / max(self.stream.epochs, 1))) / 2

    def loss(self, batch):
        if self.cfg.cosine:
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr_at(self.epoch())
        self.step += 1
        logits = self.pathway_logits(batch.x, [self.task])[0]
        return self.task_loss(logits, batch.y)

    # ------------------------------------------------------------------ prediction
    def predict(self, x):
        """Each class's logit from its own task's pathway (head_mode 'concat'); unseen classes -inf."""
        self.model.eval()
        with self.autocast(), torch.no_grad():
            n = len(self.task_classes)
            if n == 0:                                  # before any training: pathway 0, every class
                return self.pathway_logits(x, [0])[0].float()
            per = self.pathway_logits(x, list(range(n))).float()          # [T, B, C]
            owner = torch.zeros(per.shape[-1], n, device=per.device)
            for t, classes in enumerate(self.task_classes):
                owner[torch.as_tensor(classes, device=per.device), t] = 1
            logits = torch.einsum("tbc,ct->bc", per, owner)
            return mask_to_classes(logits, sorted({k for cl in self.task_classes for k in cl}))

    def extra_state(self):
        return {**super().extra_state(), "task_classes": [list(c) for c in self.task_classes], "step": self.step}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.task_classes = [list(c) for c in state.get("task_classes", [])]
        self.step = int(state.get("step", 0))
