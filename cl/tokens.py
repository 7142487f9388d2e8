"""Token streams for language-model scenarios (continual pre-training).

A domain's text becomes one contiguous 1-D tensor of token ids. Training and evaluation read
fixed-length windows of ``context + 1`` tokens from it: the input is the first ``context`` ids,
the target the same window shifted by one (next-token prediction), served as
``cl.data.Batch(x=[B, context] long, y=[B, context] long)``.

- Training (``batches(..., shuffle=True, generator=g)``): random windows. Each pass over the
  stream starts at a random phase in ``[0, context)`` and visits the non-overlapping windows of
  that grid in a random order, so every token is seen once per pass and the window boundaries
  move from pass to pass. ``num_windows`` (the token budget / context) windows make one epoch of
  the runner; a budget larger than the stream chains several passes (several true epochs).
- Evaluation (``shuffle=False``): the fixed grid ``0, context, 2*context, ...`` in order, so every
  run and every strategy scores exactly the same windows.

``TokenData`` offers the interface the runner uses on ``cl.data.TensorData``: ``batches``,
``num_batches``, ``__len__``, ``subset``, ``with_transform``. ``MixedTokens`` draws each batch
from several token streams with given per-domain weights (replay, data mixtures).
"""
import math
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cl.data import Batch


class TokenData:
    """Windows of a token stream.

    tokens: 1-D integer tensor (uint8 for byte-level text, int32 otherwise); ids < ``vocab_size``.
    context: tokens per input window (the target window is shifted by one).
    num_windows: windows per epoch (default: the non-overlapping windows of one pass).
    starts: explicit window start positions (then the windows are exactly these: a subset).
    name: the domain, for messages.
    """

    metric = "loss"
    transform = None        # token windows take no augmentation (TensorData compatibility)
    eval_only = False       # True: a domain evaluated but never trained (text_domains' train: false)

    def __init__(self, tokens, context, *, num_windows=None, starts=None, vocab_size=None, name=""):
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be a 1-D integer tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        if len(tokens) < context + 1:
            raise ValueError(f"{name or 'token stream'} has {len(tokens)} tokens, fewer than one window "
                             f"of context + 1 = {context + 1}")
        self.tokens, self.context, self.name = tokens, int(context), name
        self.vocab_size = int(vocab_size) if vocab_size is not None else int(tokens.max()) + 1
        self.starts = None if starts is None else torch.as_tensor(starts, dtype=torch.long)
        self.num_windows = len(self.starts) if self.starts is not None else \
            int(num_windows if num_windows is not None else self.grid_size(0))
        self._offsets = torch.arange(self.context + 1)

    # ------------------------------------------------------------------ sizes
    def __len__(self):
        return self.num_windows

    @property
    def num_tokens(self):
        """Length of the underlying stream."""
        return len(self.tokens)

    def grid_size(self, phase):
        """Non-overlapping windows that fit when the grid starts at ``phase``."""
        return max(0, (len(self.tokens) - 1 - phase) // self.context)

    def num_batches(self, batch_size, drop_last=False):
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    # ------------------------------------------------------------------ windows
    def fixed_starts(self):
        """Start positions of the evaluation windows, in order."""
        if self.starts is not None:
            return self.starts
        return torch.arange(self.num_windows, dtype=torch.long) * self.context if \
            self.num_windows <= self.grid_size(0) else self._cycle_grid()

    def _cycle_grid(self):
        grid = torch.arange(self.grid_size(0), dtype=torch.long) * self.context
        reps = -(-self.num_windows // len(grid))
        return grid.repeat(reps)[: self.num_windows]

    def one_pass(self, generator):
        """Window starts of one random pass: a random phase, then the grid in a random order.
        With explicit ``starts``, a random permutation of them."""
        if self.starts is not None:
            return self.starts[torch.randperm(len(self.starts), generator=generator)]
        phase = int(torch.randint(0, self.context, (1,), generator=generator))
        if self.grid_size(phase) == 0:
            phase = 0
        n = self.grid_size(phase)
        return phase + torch.randperm(n, generator=generator) * self.context

    def windows(self, starts, device="cpu"):
        """Batch(x, y) of the windows starting at ``starts`` (1-D long tensor)."""
        w = self.tokens[starts[:, None] + self._offsets]
        w = w.to(device, non_blocking=True).long()
        return Batch(w[:, :-1], w[:, 1:])

    def batches(self, batch_size, shuffle=False, generator=None, device="cpu", drop_last=False):
        """Yield ``len(self)`` windows as Batch(x, y) on ``device``: random passes when
        ``shuffle`` (seeded by ``generator``), the fixed evaluation grid otherwise."""
        stream = WindowStream(self, generator) if shuffle else None
        fixed = None if shuffle else self.fixed_starts()
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            count = min(batch_size, stop - start)
            starts = stream.take(count) if shuffle else fixed[start:start + count]
            yield self.windows(starts, device)

    # ------------------------------------------------------------------ TensorData interface
    def subset(self, index):
        """The windows ``index`` of the evaluation grid (``fixed_starts()[index]``), as a TokenData
        with explicit starts."""
        index = torch.as_tensor(index, dtype=torch.long)
        return TokenData(self.tokens, self.context, starts=self.fixed_starts()[index],
                         vocab_size=self.vocab_size, name=self.name)

    def with_transform(self, transform):
        if transform is not None:
            raise ValueError("token windows take no input transform (augmentation is for images)")
        return self

    def with_windows(self, num_windows):
        """The same stream with another budget (windows per epoch)."""
        return TokenData(self.tokens, self.context, num_windows=num_windows, vocab_size=self.vocab_size,
                         name=self.name)

    def to(self, device):
        out = TokenData(self.tokens.to(device), self.context, num_windows=self.num_windows,
                        starts=None if self.starts is None else self.starts.to(device),
                        vocab_size=self.vocab_size, name=self.name)
        out._offsets = out._offsets.to(device)
        return out

    def state(self):
        """Plain tensors/numbers for a checkpoint (``from_state`` rebuilds it)."""
        return {"tokens": self.tokens, "context": self.context, "num_windows": self.num_windows,
                "starts": self.starts, "vocab_size": self.vocab_size, "name": self.name}

    @classmethod
    def from_state(cls, state):
        return cls(state["tokens"], state["context"], num_windows=None if state["starts"] is not None else
                   state["num_windows"], starts=state["starts"], vocab_size=state["vocab_size"], name=state["name"])

    @staticmethod
    def concat(datas: Sequence["TokenData"]):
        """One stream from several (the union of domains: joint training); windows per epoch add up.
        A window may straddle the junction of two streams, as between documents within one."""
        first = datas[0]
        if any(d.context != first.context for d in datas):
            raise ValueError("cannot concatenate token streams of different context lengths")
        tokens = torch.cat([d.tokens.to(torch.int32) if d.tokens.dtype != first.tokens.dtype else d.tokens
                            for d in datas])
        return TokenData(tokens, first.context, num_windows=sum(len(d) for d in datas),
                         vocab_size=max(d.vocab_size for d in datas), name="+".join(d.name for d in datas))


class WindowStream:
    """An endless supply of training window starts of one TokenData: pass after pass."""

    def __init__(self, data, generator):
        self.data, self.generator = data, generator
        self.buffer = torch.empty(0, dtype=torch.long)

    def take(self, n):
        while len(self.buffer) < n:
            self.buffer = torch.cat([self.buffer, self.data.one_pass(self.generator)])
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


# ---------------------------------------------------------------------------- mixtures
def apportion(weights, n, carry):
    """Integer counts summing to ``n`` whose running totals track ``weights * n`` per step.

    ``carry`` (float array, updated in place) is what each source is owed from earlier steps.
    Each count is the floor or ceiling of its share; over many steps with fixed weights the
    totals differ from ``weights * steps * n`` by less than one window per source. Example:
    weights (0.95, 0.05) with n = 16 give the replay source 1, 1, 0, 1, 1 windows in the first
    five steps: 4 = 5% of 80.
    """
    w = np.asarray(weights, dtype=float)
    want = carry + w * n
    pos = np.clip(want, 0, None)
    scaled = pos * (n / pos.sum()) if pos.sum() > 0 else np.full_like(pos, n / len(pos))
    counts = np.floor(scaled + 1e-9).astype(int)
    rest = n - counts.sum()
    if rest > 0:
        order = np.argsort(-(scaled - counts), kind="stable")
        counts[order[:rest]] += 1
    carry[:] = want - counts
    return counts


class MixedTokens:
    """Batches drawn from several token streams with per-batch domain weights.

    sources: TokenData per domain (their random passes are used, as in ``TokenData.batches``).
    weights_fn: ``step -> weights`` over ``sources`` (step counts batches within this data,
    across epochs); called before every batch.
    num_windows: windows per epoch (the budget of the experience).
    groups: domain index of each source, served as ``Batch.g`` per window.
    on_counts: optional ``(step, counts)`` callback (logging, tests).

    Counts per batch come from ``apportion``; with a weight of 1 on one source the batches are
    exactly those of that source's ``batches(shuffle=True)`` with the same generator.
    """

    metric = "loss"
    transform = None

    def __init__(self, sources: List[TokenData], weights_fn: Callable, num_windows: int,
                 groups: Optional[Sequence[int]] = None, on_counts: Optional[Callable] = None):
        if not sources:
            raise ValueError("MixedTokens needs at least one source")
        self.sources, self.weights_fn, self.num_windows = list(sources), weights_fn, int(num_windows)
        self.groups = list(groups) if groups is not None else list(range(len(sources)))
        self.on_counts = on_counts
        self.context = sources[0].context
        self.vocab_size = max(s.vocab_size for s in sources)
        self.step = 0
        self.carry = np.zeros(len(sources))
        self.streams = {}

    def __len__(self):
        return self.num_windows

    def num_batches(self, batch_size, drop_last=False):
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def with_transform(self, transform):
        if transform is not None:
            raise ValueError("token windows take no input transform")
        return self

    def batches(self, batch_size, shuffle=True, generator=None, device="cpu", drop_last=False):
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            count = min(batch_size, stop - start)
            counts = apportion(self.weights_fn(self.step), count, self.carry)
            if self.on_counts is not None:
                self.on_counts(self.step, counts)
            xs, ys, gs = [], [], []
            for k, c in enumerate(counts):
                if c == 0:
                    continue
                if k not in self.streams:
                    self.streams[k] = WindowStream(self.sources[k], generator)
                b = self.sources[k].windows(self.streams[k].take(int(c)), device)
                xs.append(b.x), ys.append(b.y)
                gs.append(torch.full((int(c),), self.groups[k], dtype=torch.long))
            self.step += 1
            g = torch.cat(gs).to(device) if len(gs) > 1 else gs[0].to(device)
            if len(xs) == 1:
                yield Batch(xs[0], ys[0], g)
            else:
                yield Batch(torch.cat(xs), torch.cat(ys), g)


# ---------------------------------------------------------------------------- losses
def token_cross_entropy(logits, y, reduction="mean"):
    """Cross-entropy of next-token logits [B, T, V] against targets [B, T] (or class logits
    [B, C] against labels [B]): one loss per token, averaged (or summed) over all tokens."""
    if logits.dim() == 3:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def eval_batch_size(data, batch_size, vocab_size, max_logits=2 ** 25):
    """``batch_size`` capped so that one batch's logits ([B, context, vocab] floats) stay under
    ``max_logits`` elements (128 MiB in float32): image-sized eval batches of 256 would need
    gigabytes of logits for a 50k vocabulary."""
    return max(1, min(batch_size, max_logits // max(1, data.context * vocab_size)))


@torch.no_grad()
def mean_token_loss(strategy, data, batch_size, device, vocab_size):
    """Mean next-token cross-entropy (nats per token) of ``strategy.predict`` over the fixed
    evaluation windows of ``data``."""
    total, count = 0.0, 0
    bs = eval_batch_size(data, batch_size, vocab_size)
    for logits, y in strategy.predict_data(data, bs, device):
        total += float(token_cross_entropy(logits.float(), y, reduction="sum"))
        count += y.numel()
    return total / max(count, 1)


def perplexity(loss):
    """exp(loss) (inf when it overflows)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
