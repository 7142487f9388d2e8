"""Parameter-efficient tuning (PET) modules for a frozen timm ViT (used by LAE, strategies/lae.py).

Each module is small and holds only its own parameters; ``strategies._prompts.vit_tokens`` inserts it:

- ``Adapter``: a parallel bottleneck adapter, ``attn(norm1(x)) + adapter(norm1(x))``;
- ``Prefix``: key/value prefixes of the block's self-attention;
- ``LoRA``: low-rank updates of the key and value projections inside the block's fused ``qkv``
  linear layer: W_k + s_k B_k A_k and W_v + s_v B_v A_v (the query projection is untouched).

All three start as the identity of the frozen network (adapter up-projection zero, LoRA B zero;
prefixes are small) and carry learnable scalars ``Scale`` starting at 1: with ``scale: null`` in
the LAE configs (config/vit_*.yaml) the code's ``Scaler`` is such a learnable scalar, part of its
adaptation-speed calibration.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Scale", "Adapter", "Prefix", "LoRA"]


class Scale(nn.Module):
    """Multiply by a learnable scalar (starts at 1), as LAE's scaler with scale=None."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.scale


class Adapter(nn.Module):
    """Bottleneck adapter D -> hidden -> D (GELU), up-projection zero-initialised, learnable scale."""

    def __init__(self, dim, hidden=5):
        super().__init__()
        self.down, self.up, self.scale = nn.Linear(dim, hidden), nn.Linear(hidden, dim), Scale()
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h):
        return self.scale(self.up(F.gelu(self.down(h))))


class Prefix(nn.Module):
    """Key and value prefixes of ``length`` tokens (uniform in [0, 0.01]) with learnable scales."""

    def __init__(self, dim, length=10):
        super().__init__()
        self.key = nn.Parameter(torch.empty(length, dim).uniform_(0, 0.01))
        self.val = nn.Parameter(torch.empty(length, dim).uniform_(0, 0.01))
        self.key_scale, self.val_scale = Scale(), Scale()

    def forward(self):
        return self.key_scale(self.key), self.val_scale(self.val)


class LoRA(nn.Module):
    """Rank-``rank`` updates of the key and value rows of a fused ``qkv`` linear layer [3D, D].

    ``A`` [2, rank, D] (key, value) starts like an ``nn.Linear(D, rank)`` weight (Kaiming-uniform,
    a=sqrt(5)); ``B`` [2, D, rank] starts at zero, so the update B A is zero at first (Hu et al.,
    LoRA, arXiv 2106.09685; LAE's KV-LoRA). No alpha/rank factor: each update is multiplied by a
    learnable scalar (``k_scale``, ``v_scale``, starting at 1) instead, as in the LAE code.
    """

    def __init__(self, dim, rank=5):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.A = nn.Parameter(torch.empty(2, rank, dim))
        self.B = nn.Parameter(torch.zeros(2, dim, rank))
        for a in self.A.data:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.k_scale, self.v_scale = Scale(), Scale()

    def delta(self):
        """The weight update of the key and value rows, [2D, D] (zero rows for the query omitted)."""
        return torch.cat([self.k_scale(self.B[0] @ self.A[0]), self.v_scale(self.B[1] @ self.A[1])])

    def forward(self, linear, h):
        """``linear(h)`` with the key/value rows of its weight updated: [..., 3D]."""
        d = self.delta().to(linear.weight.dtype)
        w = linear.weight
        return F.linear(h, torch.cat([w[:-len(d)], w[-len(d):] + d]), linear.bias)
