"""A small decoder-only transformer (GPT-2 layout) for continual pre-training experiments.

Pre-LayerNorm blocks (causal self-attention + 4x GELU MLP), learned position embeddings, the
output layer tied to the token embedding, GPT-2's initialisation (normal, std 0.02; residual
output projections scaled by 1/sqrt(2 * n_layer)). Attention is
``torch.nn.functional.scaled_dot_product_attention`` with ``is_causal=True`` (flash / memory-
efficient kernels on GPUs).

Input: token ids [B, T] (T <= context); output: next-token logits [B, T, vocab].
``num_classes`` is the tokenizer's vocabulary (the scenario sets it) and ``input_shape`` is
``(context,)``. Named sizes (parameters counted with a 256-id byte vocabulary / GPT-2's 50,257):

| size | layers | width | heads | params (byte vocab) | note |
|---|---|---|---|---|---|
| ``test`` | 2 | 64 | 2 | 0.1M | unit tests |
| ``nano`` | 4 | 128 | 4 | 0.8M | CPU experiments (~1M) |
| ``micro`` | 6 | 256 | 8 | 4.8M | |
| ``mini`` | 8 | 384 | 6 | 14M | |
| ``small`` | 12 | 768 | 12 | 85M / 124M | GPT-2 small (Radford et al. 2019); Pythia-160M's shape |
| ``medium`` | 24 | 1024 | 16 | 302M / 355M | GPT-2 medium |

Pythia-160M (Biderman et al. 2023) has the ``small`` shape with rotary embeddings and parallel
attention; for Pythia's own weights use ``hf_causal_lm`` (cl/models/hf_lm.py).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from cl.errors import ConfigError
from cl.registry import MODELS

SIZES = {  # name: (n_layer, n_embd, n_head)
    "test": (2, 64, 2),
    "nano": (4, 128, 4),
    "micro": (6, 256, 8),
    "mini": (8, 384, 6),
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout, bias):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln2 = nn.LayerNorm(n_embd, bias=bias)
        self.fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab_size]."""

    def __init__(self, vocab_size, context, n_layer, n_embd, n_head, dropout=0.0, bias=True, tie_weights=True):
        super().__init__()
        if n_embd % n_head:
            raise ConfigError(f"gpt: n_embd ({n_embd}) must be divisible by n_head ({n_head}).")
        self.vocab_size, self.context = vocab_size, context
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(context, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(n_embd, n_head, dropout, bias) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init)
        for name, p in self.named_parameters():     # GPT-2: residual projections scaled by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        self.checkpoint_hint = (
            f"A language model's embedding/head shape (vocabulary {vocab_size}) must match the tokenizer the "
            "checkpoint was trained with: use the same scenario.tokenizer (and bpe_path / vocab_size) and "
            "scenario.context as that run.")

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        T = idx.shape[1]
        if T > self.context:
            raise ValueError(f"sequence of {T} tokens is longer than the model's context {self.context}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@MODELS.register("gpt")
def gpt(num_classes, input_shape, size="nano", n_layer=None, n_embd=None, n_head=None, dropout=0.0,
        bias=True, tie_weights=True, vocab_size=None, context=None):
    """Decoder-only transformer (GPT-2 layout) with named sizes test/nano/micro/mini/small/medium.

    num_classes: the tokenizer's vocabulary; input_shape: (context,). ``vocab_size`` may pad the
    vocabulary (e.g. 50304 for GPU-friendly shapes) but never be smaller than the tokenizer's;
    ``context`` may exceed the scenario's window (never be smaller).
    """
    if size not in SIZES:
        raise ConfigError(f"gpt: unknown size '{size}'. Sizes: {', '.join(SIZES)} (or set n_layer, n_embd, n_head).")
    if len(input_shape) != 1:
        raise ConfigError(f"gpt takes token windows (input_shape (context,)), got input_shape {tuple(input_shape)}: "
                          "use it with a text scenario such as text_domains.")
    L, E, H = SIZES[size]
    vocab = int(vocab_size) if vocab_size is not None else int(num_classes)
    if vocab < num_classes:
        raise ConfigError(f"gpt: model.args.vocab_size={vocab} is smaller than the tokenizer's vocabulary "
                          f"({num_classes}); token ids would fall outside the embedding. Remove vocab_size or set it "
                          f">= {num_classes}.")
    ctx = int(context) if context is not None else int(input_shape[0])
    if ctx < input_shape[0]:
        raise ConfigError(f"gpt: model.args.context={ctx} is shorter than the scenario's context {input_shape[0]}.")
    return GPT(vocab, ctx, n_layer or L, n_embd or E, n_head or H, dropout=dropout, bias=bias, tie_weights=tie_weights)
