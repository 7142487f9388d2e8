"""A replay buffer shared by rehearsal strategies (ER, DER++, FPF, ...).

    buf = ReplayBuffer(200, policy="reservoir", device="cpu", generator=torch.Generator().manual_seed(0))
    buf.add(batch.x, batch.y, logits=out.detach())      # batch-wise, after each optimizer step
    x, y, logits, idx = buf.sample(32)                   # uniform, without replacement

Policies
- ``reservoir``: Vitter's Algorithm R per sample (Vitter 1985; as in Chaudhry et al. 2019 and
  Mammoth's ``utils/buffer.py``): the n-th example seen (0-based) fills slot n while the buffer
  is not full, else it replaces slot j ~ U{0..n} when j < capacity. Every example seen so far is
  in the buffer with probability capacity / seen.
- ``class_balanced``: fill while there is room; when full, a sample of a class that is not among
  the largest replaces a random sample of a largest class; a sample of a largest class replaces a
  random sample of its own class with probability (stored of its class) / (seen of its class)
  (class-balancing reservoir, Chrysakis & Moens, ICML 2020). Once every class has been seen
  enough, the per-class counts differ by at most 1.

Storage is compact: uint8 images stay uint8, and with ``store_uint8=True`` float images in [0, 1]
(what the runner serves) are stored back as uint8, 4x smaller than float32. This is done only when
it is lossless, i.e. the first batch's values are multiples of 1/255 (images that came from uint8);
other float inputs (features, normalized images, scikit-learn's digits in k/16) stay float32. ``sample`` always returns float inputs ([0, 1] for images).
All state is tensors, so ``state_dict`` checkpoints load with ``weights_only=True``.
"""
import torch

from cl.data import to_float
from cl.errors import CheckpointError, ConfigError

POLICIES = ("reservoir", "class_balanced")


def _uint8_exact(x):
    """True when float images are k/255 values in [0, 1] (they came from uint8), so uint8 storage is lossless."""
    scaled = x.detach().float() * 255.0
    return bool(((scaled - scaled.round()).abs().max() < 1e-3) & (scaled.min() >= 0) & (scaled.max() <= 255))


class ReplayBuffer:
    """Fixed-capacity memory of (x, y[, logits][, extra]) filled by reservoir or class-balanced sampling."""

    def __init__(self, capacity, policy="reservoir", device="cpu", generator=None, store_uint8=True):
        if int(capacity) < 1:
            raise ConfigError(f"Replay buffer capacity must be >= 1, got {capacity}. Set the strategy's buffer_size.")
        if policy not in POLICIES:
            raise ConfigError(f"Unknown buffer policy '{policy}'; choose one of {', '.join(POLICIES)}.")
        self.capacity = int(capacity)
        self.policy = policy
        self.device = torch.device(device)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.store_uint8 = bool(store_uint8)
        self.seen = 0                       # examples offered to add() so far
        self.size = 0                       # slots filled
        self.class_seen = torch.zeros(0, dtype=torch.long)   # per class (class_balanced)
        self.x = self.y = self.logits = None
        self.extra = {}

    # ------------------------------------------------------------------ storage
    def __len__(self):
        return self.size

    def _alloc(self, x, y, logits, extra):
        quantize = self.store_uint8 and x.is_floating_point() and x.dim() == 4 and _uint8_exact(x)
        dtype = torch.uint8 if quantize or x.dtype == torch.uint8 else x.dtype
        self.x = torch.zeros((self.capacity, *x.shape[1:]), dtype=dtype, device=self.device)
        if y.dim() == 2:                  # multi-hot targets [B, C] (multi-label samples)
            if self.policy != "reservoir":
                raise ConfigError(f"buffer_policy={self.policy} balances single class labels; multi-label samples "
                                  "need buffer_policy=reservoir.")
            self.y = torch.zeros((self.capacity, y.shape[1]), dtype=torch.float32, device=self.device)
        else:
            self.y = torch.zeros(self.capacity, dtype=torch.long, device=self.device)
        if logits is not None:
            self.logits = torch.zeros((self.capacity, *logits.shape[1:]), dtype=torch.float32, device=self.device)
        for k, v in (extra or {}).items():
            self.extra[k] = torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype, device=self.device)

    def _encode(self, x):
        if self.x.dtype == torch.uint8 and x.dtype != torch.uint8:
            return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return x.to(self.x.dtype)

    def _write(self, slots, src, x, y, logits, extra):
        """Store samples ``src`` of the batch into buffer ``slots`` (both long tensors on CPU)."""
        if len(slots) == 0:
            return
        s, b = slots.to(self.device), src.to(x.device)
        self.x[s] = self._encode(x[b]).to(self.device)
        self.y[s] = y[b].to(self.device)
        if self.logits is not None:
            if logits is None:
                raise ValueError("this buffer stores logits: pass logits= to every add()")
            self.logits[s] = logits[b].detach().float().to(self.device)
        for k, t in self.extra.items():
            t[s] = extra[k][b].detach().to(self.device, t.dtype)

    # ------------------------------------------------------------------ add
    @torch.no_grad()
    def add(self, x, y, logits=None, extra=None):
        """Offer a batch ``x [B, ...]``, ``y [B]`` (optional ``logits [B, C]``, ``extra`` {name: [B, ...]})."""
        n = len(y)
        if n == 0:
            return
        if self.x is None:
            self._alloc(x, y, logits, extra)
        if self.policy == "reservoir":
            self._add_reservoir(x, y, logits, extra, n)
        else:
            self._add_balanced(x, y, logits, extra, n)

    def _add_reservoir(self, x, y, logits, extra, n):
        order = torch.arange(n)
        seen_before = self.seen + order                                   # 0-based count of each sample
        # Algorithm R: slot j ~ U{0..seen_before}, kept when j < capacity
        j = (torch.rand(n, generator=self.generator, dtype=torch.float64) * (seen_before + 1).double()).long()
        slot = torch.where(seen_before < self.capacity, seen_before, j)
        keep = slot < self.capacity
        slot, src = slot[keep], order[keep]
        if len(slot) > 1:  # several samples of one batch hit the same slot: the last one wins (sequential semantics)
            uniq, inv = torch.unique(slot, return_inverse=True)
            last = torch.full((len(uniq),), -1, dtype=torch.long).scatter_reduce(0, inv, src, "amax")
            slot, src = uniq, last
        self._write(slot, src, x, y, logits, extra)
        self.seen += n
        self.size = min(self.capacity, self.seen)

    def _add_balanced(self, x, y, logits, extra, n):
        labels = y.detach().cpu().long()
        top = int(labels.max()) + 1
        if top > len(self.class_seen):
            self.class_seen = torch.cat([self.class_seen, torch.zeros(top - len(self.class_seen), dtype=torch.long)])
        stored_y = self.y[: self.size].cpu().clone()
        for i in range(n):
            c = int(labels[i])
            self.class_seen[c] += 1
            self.seen += 1
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
                stored_y = torch.cat([stored_y, labels[i:i + 1]])
            else:
                counts = torch.bincount(stored_y, minlength=len(self.class_seen))
                largest = counts.max()
                if counts[c] < largest:       # evict a random sample of a largest class
                    big = torch.nonzero(counts == largest).flatten()
                    victim_class = big[torch.randint(len(big), (1,), generator=self.generator)]
                    candidates = torch.nonzero(stored_y == victim_class).flatten()
                else:                         # reservoir within the class: keep with prob stored_c / seen_c
                    u = torch.rand(1, generator=self.generator, dtype=torch.float64)
                    if float(u) >= float(counts[c]) / float(self.class_seen[c]):
                        continue
                    candidates = torch.nonzero(stored_y == c).flatten()
                slot = int(candidates[torch.randint(len(candidates), (1,), generator=self.generator)])
                stored_y[slot] = c
            self._write(torch.tensor([slot]), torch.tensor([i]), x, y, logits, extra)

    # ------------------------------------------------------------------ sample
    def sample(self, n, generator=None):
        """Up to ``n`` stored samples drawn uniformly without replacement.

        Returns ``(x float, y, logits or None, idx)`` on the buffer's device; ``idx`` are slots,
        so ``buf.logits[idx] = ...`` or ``buf.extra[k][idx]`` address the same samples.
        """
        if self.size == 0:
            raise ValueError("sample() on an empty replay buffer; check len(buffer) first")
        g = generator if generator is not None else self.generator
        k = min(int(n), self.size)
        idx = torch.randperm(self.size, generator=g)[:k].to(self.device)
        logits = self.logits[idx] if self.logits is not None else None
        return to_float(self.x[idx]), self.y[idx], logits, idx

    def get_all(self):
        """Every stored sample (x float, y, logits or None) in slot order."""
        x = to_float(self.x[: self.size]) if self.x is not None else None
        y = self.y[: self.size] if self.y is not None else None
        logits = self.logits[: self.size] if self.logits is not None else None
        return x, y, logits

    def class_counts(self):
        """Stored samples per class (long tensor indexed by class)."""
        if self.size == 0:
            return torch.zeros(0, dtype=torch.long)
        if self.y.dim() == 2:             # multi-hot: stored samples holding each class
            return self.y[: self.size].cpu().sum(0).long()
        return torch.bincount(self.y[: self.size].cpu())

    def memory_bytes(self):
        """Bytes held by the stored tensors (inputs, labels, logits, extras) at full capacity."""
        tensors = [self.x, self.y, self.logits, *self.extra.values()]
        return int(sum(t.numel() * t.element_size() for t in tensors if t is not None))

    def results(self):
        """Numbers for results.json (via Strategy.results())."""
        return {"buffer_capacity": self.capacity, "buffer_policy": self.policy, "buffer_filled": self.size,
                "buffer_seen": self.seen, "buffer_memory_bytes": self.memory_bytes(),
                "buffer_dtype": str(self.x.dtype).replace("torch.", "") if self.x is not None else None,
                "buffer_class_counts": self.class_counts().tolist()}

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """Tensors only (loads with ``torch.load(weights_only=True)``)."""
        state = {"seen": torch.tensor(self.seen), "size": torch.tensor(self.size),
                 "capacity": torch.tensor(self.capacity), "class_seen": self.class_seen.clone(),
                 "generator": self.generator.get_state()}
        if self.x is not None:
            state["x"], state["y"] = self.x.cpu(), self.y.cpu()
        if self.logits is not None:
            state["logits"] = self.logits.cpu()
        for k, v in self.extra.items():
            state[f"extra.{k}"] = v.cpu()
        return state

    def load_state_dict(self, state):
        if int(state["capacity"]) != self.capacity:
            raise CheckpointError(f"The checkpoint's replay buffer has capacity {int(state['capacity'])}, this run "
                                  f"uses {self.capacity}; resume with the same buffer_size.")
        self.seen, self.size = int(state["seen"]), int(state["size"])
        self.class_seen = state["class_seen"].clone().long()
        self.generator.set_state(state["generator"].cpu())
        self.x = state["x"].to(self.device) if "x" in state else None
        self.y = state["y"].to(self.device) if "y" in state else None
        self.logits = state["logits"].to(self.device) if "logits" in state else None
        self.extra = {k[len("extra."):]: v.to(self.device) for k, v in state.items() if k.startswith("extra.")}


def buffer_from_config(cfg, device):
    """A strategy's buffer from its config fields ``buffer_size``, ``buffer_policy``, ``store_uint8``.

    The sampling generator is seeded from the run seed (``torch.initial_seed()`` after the runner's
    seeding) and checkpointed with the buffer, so a resumed run draws the same samples.
    """
    gen = torch.Generator().manual_seed(torch.initial_seed() % 2**63)
    return ReplayBuffer(cfg.buffer_size, policy=cfg.buffer_policy, device=device, generator=gen,
                        store_uint8=getattr(cfg, "store_uint8", True))
