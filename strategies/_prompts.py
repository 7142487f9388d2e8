"""Prompts, prefixes and adapters on a frozen timm VisionTransformer (shared by the prompt strategies).

Everything here works on timm's ``VisionTransformer`` (``timm/vit_base_patch16_224`` and friends,
or the small ``vit_tiny_cifar``) without modifying it: ``vit_tokens`` re-runs the network's own
modules (patch embedding, position embedding, blocks, final norm) and inserts, where asked,

- prompt-tuning at the input: prompt tokens placed after the [CLS] token (L2P);
- prefix-tuning inside chosen blocks: learned key/value prefixes concatenated to the keys and
  values of the block's self-attention (DualPrompt, CODA-Prompt, LAE-Prefix); with
  ``compensate`` the attention to the prefix is renormalised to sum to one (LAE's calibration);
- parallel adapters: ``attn(norm1(x)) + adapter(norm1(x))`` in chosen blocks (LAE-Adapter);
- LoRA: low-rank updates of the key/value projections of chosen blocks (LAE-LoRA).

The PET modules themselves (``Adapter``, ``Prefix``, ``LoRA``) are in ``strategies/_pet.py``.

A block with nothing inserted runs the unmodified timm block, so with nothing inserted
``vit_tokens(vit, x)`` equals ``vit.forward_features(x)``.

The hooks the four strategies share (frozen backbone + head, query cache, train-time class
masking, seen-class masking at prediction, state) are in ``strategies/prompt_base.py``.

The query of the prompt pool is the [CLS] feature of the frozen, un-prompted network
(``frozen_query``). ``QueryCache`` computes it once per training image and experience: the
strategy's ``train_data(exp)`` returns the experience's data with ``g`` set to the sample index
(``indexed``), and the training loss looks the query up by ``batch.g``. The cache is filled from
the *un-augmented* images, so it is exact when ``scenario.augment=none``; with augmentation the
query comes from the clean image while the prompted forward pass sees the augmented one (the
papers' code queries with the augmented view). See docs/prompts.md.
"""
import torch
import torch.nn.functional as F
from torch import nn

from cl.data import TensorData
from cl.errors import ConfigError
from cl.models import InputNormalize

__all__ = ["split_model", "freeze_backbone", "vit_tokens", "attention", "frozen_query", "PromptPool",
           "QueryCache", "indexed", "mask_to_classes", "orthogonal_rows"]


# ---------------------------------------------------------------------------- the frozen ViT
def split_model(model, input_size=0):
    """(prepare fn, timm VisionTransformer) of a model built by cl.models.build_model.

    ``prepare(x)`` resizes [0, 1] images to ``input_size`` (bilinear; 0: as served, e.g. 224 for
    ViT-B/16 on 32x32 CIFAR) and applies the model's input normalization.
    """
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer
    net = model.net if isinstance(model, InputNormalize) else model

    def normalize(x):
        if input_size and tuple(x.shape[-2:]) != (input_size, input_size):
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
        return (x - model.mean) / model.std if isinstance(model, InputNormalize) else x
    if not isinstance(net, VisionTransformer):
        raise ConfigError(f"Prompt strategies need a timm VisionTransformer (e.g. model.name=vit_tiny_cifar or "
                          f"timm/vit_base_patch16_224), got {type(net).__name__}.")
    if not all(isinstance(b, Block) and isinstance(b.attn, Attention) for b in net.blocks):
        raise ConfigError("Prompt strategies need a ViT made of timm's standard Block/Attention modules "
                          "(vit_*, deit_*); this variant uses other block types.")
    if net.cls_token is None:
        raise ConfigError("Prompt strategies need a ViT with a [CLS] token (class_token=True).")
    return normalize, net


def freeze_backbone(vit):
    """requires_grad False for every parameter except the classifier head; returns the head's parameters."""
    for name, p in vit.named_parameters():
        p.requires_grad = name.startswith("head.")
    return list(vit.head.parameters())


def _heads(p, batch, heads, head_dim):
    """[B, L, C] (or [L, C]) prefix -> [B, heads, L, head_dim]."""
    if p.dim() == 2:
        p = p.unsqueeze(0).expand(batch, -1, -1)
    return p.reshape(batch, p.shape[1], heads, head_dim).transpose(1, 2)


def attention(attn, h, prefix=None, compensate=False, lora=None):
    """timm ``Attention`` on ``h`` [B, N, C] with optional key/value prefixes ``(pk, pv)`` [B, L, C].

    The prefixes are placed before the keys/values computed from ``h`` (prefix-tuning, Li & Liang
    2021, as used by DualPrompt). ``compensate``: the attention weights on the prefix are divided by
    their sum (LAE's compensatory prefix), so the prefix adds a normalised term to the output.
    ``lora``: a ``strategies._pet.LoRA``; the qkv projection becomes ``lora(attn.qkv, h)``.
    """
    B, N, _ = h.shape
    H, Dh = attn.num_heads, attn.head_dim
    qkv = attn.qkv(h) if lora is None else lora(attn.qkv, h)
    q, k, v = qkv.reshape(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    L = 0
    if prefix is not None:
        pk, pv = prefix
        L = pk.shape[-2]
        k = torch.cat([_heads(pk, B, H, Dh), k], dim=2)
        v = torch.cat([_heads(pv, B, H, Dh), v], dim=2)
    if compensate and L:
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        lam = a[..., :L].sum(dim=-1, keepdim=True).clamp(min=1e-12)
        a = torch.cat([a[..., :L] / lam, a[..., L:]], dim=-1)
        out = attn.attn_drop(a) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, H * Dh))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(h).sigmoid()
    return attn.proj_drop(attn.proj(out))


def _block(blk, t, prefix, adapter, lora, compensate, trace):
    h = blk.norm1(t)
    a = attention(blk.attn, h, prefix, compensate, lora)
    if adapter is not None:
        a = a + adapter(h)
    if trace is not None:
        trace.append(a)
    t = t + blk.drop_path1(blk.ls1(a))
    return t + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t))))


def vit_tokens(vit, x, prompts=None, prefixes=None, adapters=None, compensate=False, trace=None, loras=None):
    """Token sequence after the final norm, [B, N (+ prompts), C].

    x: normalized images. prompts: [B, P, C] or [P, C] tokens inserted after [CLS].
    prefixes: {block index: (pk, pv)}; adapters, loras: {block index: module}. ``trace`` (a list)
    receives every block's attention-branch output (for tests).
    """
    t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    if prompts is not None:
        n = vit.num_prefix_tokens
        prompts = prompts.unsqueeze(0).expand(len(t), -1, -1) if prompts.dim() == 2 else prompts
        t = torch.cat([t[:, :n], prompts.to(t.dtype), t[:, n:]], dim=1)
    prefixes, adapters, loras = prefixes or {}, adapters or {}, loras or {}
    for i, blk in enumerate(vit.blocks):
        if trace is not None or i in prefixes or i in adapters or i in loras:
            t = _block(blk, t, prefixes.get(i), adapters.get(i), loras.get(i), compensate, trace)
        else:
            t = blk(t)
    return vit.norm(t)


@torch.no_grad()
def frozen_query(vit, x):
    """[CLS] feature (after the final norm) of the un-prompted frozen ViT: the pool's query [B, C]."""
    was = vit.training
    vit.eval()
    q = vit.forward_features(x)[:, 0].float()
    vit.train(was)
    return q


# ---------------------------------------------------------------------------- query cache
def indexed(data):
    """The same data with ``g`` = sample index 0..N-1 (so a batch tells which images it holds)."""
    return TensorData(data.x, data.y, torch.arange(len(data)), data.transform)


class QueryCache:
    """The frozen query of every training image of one experience, computed once.

    ``fill(fn, data, batch_size, device)`` runs ``fn`` (normalized-image -> query) over the
    un-augmented data; ``lookup(g)`` returns the rows of the sample indices ``g``.
    """

    def __init__(self):
        self.table = None

    def fill(self, fn, data, batch_size, device):
        rows = [fn(b.x) for b in data.with_transform(None).batches(batch_size, device=device)]
        self.table = torch.cat(rows) if rows else None
        return self

    def lookup(self, g):
        if self.table is None:
            raise RuntimeError("QueryCache.lookup before fill(): call fill in train_data.")
        return self.table[g.to(self.table.device)]

    def clear(self):
        self.table = None


# ---------------------------------------------------------------------------- prompt pool
class PromptPool(nn.Module):
    """``pool_size`` prompts of shape ``shape`` with one key each; selection by cosine similarity.

    Keys and prompts start uniform in [-1, 1] (``prompt_init``/``prompt_key_init`` 'uniform' of the
    L2P and DualPrompt code).
    """

    def __init__(self, pool_size, shape, key_dim):
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(pool_size, *shape).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(pool_size, key_dim).uniform_(-1, 1))

    def similarity(self, query):
        """Cosine similarity [B, pool] between queries [B, D] and the keys."""
        return F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).t()

    def select(self, query, top_k, batchwise=False):
        """(indices [B, top_k], similarity [B, pool]): the top-k keys by cosine similarity per query.

        ``batchwise``: every sample gets the same top_k prompts, those chosen most often across the
        batch (ties broken by mean similarity), as the L2P code's ``batchwise_prompt``.
        """
        if top_k > len(self.keys):
            raise ConfigError(f"top_k={top_k} exceeds the prompt pool size {len(self.keys)}; lower top_k.")
        sim = self.similarity(query)
        idx = sim.topk(top_k, dim=1).indices
        if batchwise:
            counts = torch.bincount(idx.flatten(), minlength=len(self.keys)).to(sim.dtype)
            score = counts + (sim.mean(0) + 1) / 4          # (mean sim + 1) / 4 < 1 only breaks ties
            idx = score.topk(top_k).indices.unsqueeze(0).expand(len(query), -1)
        return idx, sim

    @staticmethod
    def pull_loss(sim, idx):
        """Surrogate of the pull constraint: sum over the selected keys of 1 - cos(query, key), batch mean."""
        return (1 - sim.gather(1, idx)).sum(1).mean()


# ---------------------------------------------------------------------------- small helpers
def mask_to_classes(logits, classes):
    """Logits with every column outside ``classes`` set to -inf (train-time masking)."""
    keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    keep[torch.as_tensor(list(classes), device=logits.device)] = True
    return logits.masked_fill(~keep, float("-inf"))


@torch.no_grad()
def orthogonal_rows(t, start, end, generator=None):
    """Re-draw rows start..end-1 of ``t`` (flattened to [rows, d]) as unit vectors orthogonal to rows
    0..start-1 and to each other (Gram-Schmidt on random normal draws; CODA-Prompt's init)."""
    flat = t.data.reshape(t.shape[0], -1)
    d = flat.shape[1]
    if end > d:
        raise ConfigError(f"Cannot draw {end} mutually orthogonal vectors in {d} dimensions: lower the "
                          "prompt pool size (CODA-Prompt needs pool_size <= embedding dim).")
    basis = torch.linalg.qr(flat[:start].t().double().cpu()).Q.t() if start else torch.zeros(0, d, dtype=torch.float64)
    for i in range(start, end):
        v = torch.randn(d, generator=generator, dtype=torch.float64)
        for _ in range(2):                            # twice is enough for numerical orthogonality
            v = v - basis.t() @ (basis @ v)
        v = v / v.norm()
        basis = torch.cat([basis, v.unsqueeze(0)])
        flat[i] = v.to(flat)
    t.data.copy_(flat.reshape(t.shape))
