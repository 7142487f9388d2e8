"""Data-parallel training of one run with torch.distributed (docs/distributed.md).

Launched by ``torchrun --nproc_per_node N -m cl run ...`` (or ``cl run --nproc N ...``, which
starts torchrun). Every rank builds the same scenario, model and strategy from the same seed and
runs the same loop over the same global batches (``strategy.batch_size`` rows, the same seeded
permutation and augmentation): everything a strategy does besides the model's forward pass
(replay-buffer insertions and draws, teacher snapshots, EMA updates, Fisher estimates) is
therefore the same computation on every rank, with the same random numbers, and needs no message.
What is split is the expensive part:

- **training forward/backward**: inside ``sharded_forward(strategy)`` (the runner wraps each
  ``train_step`` in it) a call of the strategy's top-level model on a batch runs on this rank's
  contiguous shard of the rows only; the outputs of all ranks are gathered (``gather_rows``, an
  all-gather with autograd), so the loss is the single-process loss of the whole batch, on every
  rank. Its backward hands each rank the gradient of its own rows (times the world size, see
  ``_GatherRows``) and ``sync_gradients`` (called by ``Strategy.optimize`` between backward and
  step) averages the parameter gradients over the ranks: the sum of the shards' contributions,
  i.e. the full-batch gradient whatever the shard sizes (an uneven last batch included). A model
  call the hook does not see (a strategy that calls sub-modules itself) runs on the whole batch on
  every rank: the same gradient everywhere, which the average leaves unchanged (correct, not faster).
- **evaluation**: each rank predicts a contiguous shard of each test set (``eval_shard``) and the
  counts are summed (``sum_counts``).

Rank 0 alone writes the run folder (``main_first`` runs the folder checks/creation there and hands
the outcome, or the error, to every rank). After set-up and after every experience
``check_in_sync`` compares a checksum of the trained state across ranks and stops the run with an
error if they drifted apart: a strategy that is not distributed-safe cannot silently give a wrong
result. Strategies declare themselves safe with ``distributed_ok = True`` in their own class body
(not inherited: a subclass that adds state must check and declare it again); the others, every
online (test-time adaptation) strategy and every model with BatchNorm are refused by ``check``
before anything is written.
"""
import os
from contextlib import contextmanager, nullcontext

import torch

from cl.errors import ClError, ConfigError

NOT_DECLARED = ("it does not declare that it was checked under data parallelism (class attribute "
                "distributed_ok = True, see docs/distributed.md)")


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def world():
    """Number of ranks (1 when not distributed)."""
    d = _dist()
    return d.get_world_size() if d is not None else 1


def rank():
    d = _dist()
    return d.get_rank() if d is not None else 0


def active():
    return world() > 1


def is_main():
    return rank() == 0


def launched():
    """True when this process was started by torchrun with more than one rank (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device="auto"):
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
    environment): NCCL when the run uses CUDA (each rank on GPU LOCAL_RANK), gloo otherwise.
    Returns True when a group was joined; a no-op without torchrun or with one rank."""
    import torch.distributed as dist
    if not launched() or dist.is_initialized():
        return dist.is_initialized()
    cuda = device != "cpu" and torch.cuda.is_available() and str(device).split(":")[0] in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def shutdown():
    d = _dist()
    if d is not None:
        d.destroy_process_group()


def shard_sizes(n, ranks=None):
    """Rows of each rank when ``n`` rows are split into contiguous shards (the first ``n % ranks``
    ranks take one more), e.g. shard_sizes(10, 4) == [3, 3, 2, 2]."""
    ranks = ranks or world()
    return [n // ranks + (1 if r < n % ranks else 0) for r in range(ranks)]


def _comm_dtype(t):
    """gloo reduces float32/64 and integers; half types travel as float32."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class _GatherRows(torch.autograd.Function):
    """All ranks' shards concatenated in rank order, differentiable.

    Every rank computes the same loss L of the gathered rows, so the gradient reaching the
    gathered tensor is dL/d(rows) on every rank; the backward sums it over the ranks (W * dL/drows)
    and keeps this rank's rows. The parameter gradients are then W times this shard's contribution,
    and their average over the ranks (``sync_gradients``) is the sum of all shards' contributions."""

    @staticmethod
    def forward(ctx, local, sizes):
        d = _dist()
        ctx.sizes, ctx.rank, ctx.dtype = sizes, d.get_rank(), local.dtype
        comm = _comm_dtype(local)
        buf = local.new_zeros((max(sizes),) + tuple(local.shape[1:]), dtype=comm)
        buf[:local.shape[0]] = local.detach().to(comm)
        parts = [torch.empty_like(buf) for _ in sizes]
        d.all_gather(parts, buf)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(local.dtype)

    @staticmethod
    def backward(ctx, grad):
        g = grad.detach().to(_comm_dtype(grad)).contiguous().clone()
        _dist().all_reduce(g)
        start = sum(ctx.sizes[:ctx.rank])
        return g[start:start + ctx.sizes[ctx.rank]].to(ctx.dtype), None


STATS = {"gathers": 0}              # sharded calls gathered in this process (tests, benchmarks)


def gather_rows(local, sizes):
    """The rows of every rank's ``local`` (shard sizes ``sizes``), concatenated, with autograd."""
    STATS["gathers"] += 1
    return _GatherRows.apply(local, list(sizes))


def shard_call(fn, *rows, **kwargs):
    """``fn(*rows, **kwargs)`` computed on this rank's rows of every tensor in ``rows`` (all of the
    same length) and gathered: equal to ``fn`` on the whole batch for a row-wise ``fn`` that returns a
    tensor with one row per input row. Splits only inside ``sharded_forward`` (a training step; not
    nested in a sharded model call); the plain call otherwise, and with fewer rows than ranks."""
    n = rows[0].shape[0] if rows and torch.is_tensor(rows[0]) and rows[0].dim() else 0
    if not active() or not _HOOK["on"] or _HOOK["stack"] or n < world():
        return fn(*rows, **kwargs)
    sizes = shard_sizes(n)
    start = sum(sizes[:rank()])
    _HOOK["stack"].append(None)            # model calls inside fn run on the shard as they are
    try:
        out = fn(*(r[start:start + sizes[rank()]] for r in rows), **kwargs)
    finally:
        _HOOK["stack"].pop()
    if not torch.is_tensor(out) or out.dim() == 0 or out.shape[0] != sizes[rank()]:
        raise RuntimeError(f"shard_call: {getattr(fn, '__name__', fn)} must return one row per input row under "
                           "data parallelism (a tensor of shape [rows, ...]); it returned "
                           f"{type(out).__name__} {tuple(out.shape) if torch.is_tensor(out) else ''}.")
    return gather_rows(out, sizes)


# ---------------------------------------------------------------------------- training hooks
_HOOK = {"on": False, "stack": []}


def _pre(module, args, kwargs):
    stack = _HOOK["stack"]
    x = args[0] if args else None
    if (not _HOOK["on"] or stack or not torch.is_tensor(x) or x.dim() == 0 or x.shape[0] < world()):
        stack.append(None)                 # nested call, or nothing to split: the plain call
        return None
    sizes = shard_sizes(x.shape[0])
    start = sum(sizes[:rank()])
    stack.append(sizes)
    return (x[start:start + sizes[rank()]],) + tuple(args[1:]), kwargs


def _post(module, args, kwargs, output):
    sizes = _HOOK["stack"].pop()
    if sizes is None:
        return None
    if not torch.is_tensor(output) or output.dim() == 0 or output.shape[0] != sizes[rank()]:
        raise RuntimeError(f"Under data parallelism the model {type(module).__name__} must return one row of outputs "
                           f"per input row; it returned {type(output).__name__}. Run this model with one process.")
    return gather_rows(output, sizes)


def _install(model):
    if not getattr(model, "_cl_sharded", False):
        model.register_forward_pre_hook(_pre, with_kwargs=True)
        model.register_forward_hook(_post, with_kwargs=True)
        model._cl_sharded = True


@contextmanager
def _sharding(model):
    _install(model)
    _HOOK["on"], _HOOK["stack"] = True, []
    try:
        yield
    finally:
        _HOOK["on"], _HOOK["stack"] = False, []


def sharded_forward(strategy):
    """Context for one ``train_step``: calls of ``strategy.model`` (and of copies of it taken since,
    e.g. a teacher) run on this rank's rows, gathered. A no-op context when not distributed."""
    return _sharding(strategy.model) if active() else nullcontext()


def sync_gradients(params):
    """Average the gradients of ``params`` (an optimizer's parameter groups or tensors) over the
    ranks, in one flat all-reduce per dtype. A no-op when not distributed."""
    d = _dist()
    if d is None or d.get_world_size() == 1:
        return
    if isinstance(params, torch.optim.Optimizer):
        params = [p for g in params.param_groups for p in g["params"]]
    by_dtype = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    w = d.get_world_size()
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1).to(_comm_dtype(g)) for g in grads])
        d.all_reduce(flat)
        flat.div_(w)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def gradient_bytes(params):
    """Bytes one gradient all-reduce moves per rank and step (the trained parameters' gradients)."""
    return sum(p.numel() * p.element_size() for p in params if p.requires_grad)


# ---------------------------------------------------------------------------- evaluation
_SHARDS = {}


def eval_shard(data):
    """This rank's contiguous rows of a test set (the same object for the same set, so feature
    caches keyed by identity keep working); the set itself when not distributed."""
    if not active() or not hasattr(data, "subset"):
        return data
    key = id(data)
    if key not in _SHARDS or _SHARDS[key][0] is not data:
        sizes = shard_sizes(len(data))
        start = sum(sizes[:rank()])
        _SHARDS[key] = (data, data.subset(torch.arange(start, start + sizes[rank()])))
    return _SHARDS[key][1]


def sum_counts(*counts):
    """Each count summed over the ranks (as Python numbers); the counts when not distributed."""
    d = _dist()
    if d is None:
        return counts
    t = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    d.all_reduce(t)
    return tuple(int(v) if float(v).is_integer() else float(v) for v in t.tolist())


# ---------------------------------------------------------------------------- run-level checks
def check(cfg, scenario, strategy_cls, strategy=None, model=None):
    """Refuse (ConfigError, before anything is written) a distributed run that could not give the
    single-process result: online protocol, a strategy not declared safe, a model with BatchNorm."""
    if not active():
        return
    name = cfg.strategy.name
    how = "Run it with one process (no torchrun / --nproc 1), or choose a strategy listed in docs/distributed.md."
    if scenario.protocol == "online":
        raise ConfigError(
            f"Strategy '{name}' runs the online (test-time adaptation) protocol, which cannot run data-parallel: "
            "each unlabelled batch is predicted and then adapted on in order, and the batch-normalisation "
            f"statistics these methods rely on would be each rank's own. {how}")
    if getattr(scenario, "label_type", "single") == "multi":
        raise ConfigError(
            f"Scenario '{cfg.scenario.name}' is multi-label: data-parallel multi-label runs are not tested yet "
            f"(the replay of multi-hot targets and the mAP evaluation have no 2-rank check). {how}")
    reason = strategy_cls.__dict__.get("distributed_ok") is not True and NOT_DECLARED
    if strategy is not None and isinstance(strategy.__dict__.get("distributed_ok"), str):
        reason = strategy.__dict__["distributed_ok"]          # set on the instance when the config decides
    if reason:
        raise ConfigError(f"Strategy '{name}' cannot run data-parallel ({world()} ranks): {reason}. {how}")
    if model is not None:
        from torch.nn.modules.batchnorm import _BatchNorm
        bn = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
        if bn:
            raise ConfigError(
                f"Model '{cfg.model.name}' has BatchNorm layers ({', '.join(bn[:3])}{', ...' if len(bn) > 3 else ''}): "
                "under data parallelism each rank would normalise its shard with its own batch statistics, so "
                "the result would not be the single-process one. Use a model without BatchNorm (mlp, "
                "vit_tiny_cifar, a timm ViT) or run with one process.")


def checksum(strategy):
    """A float64 fingerprint of the model's parameters and buffers and the optimizer's parameters."""
    total = torch.zeros((), dtype=torch.float64)
    seen = set()
    tensors = list(strategy.model.state_dict(keep_vars=True).values())
    if strategy.optimizer is not None:
        tensors += [p for g in strategy.optimizer.param_groups for p in g["params"]]
    for k, t in enumerate(tensors):
        if not torch.is_tensor(t) or id(t) in seen or not t.numel():
            continue
        seen.add(id(t))
        v = t.detach().reshape(-1).double().cpu()
        total += (v * (1 + torch.arange(len(v), dtype=torch.float64) % 7)).sum() * (1 + k % 5)
    return total


def check_in_sync(strategy, when):
    """Stop with an error naming ``when`` if the ranks' trained states differ (a strategy that is not
    distributed-safe); a no-op when not distributed."""
    d = _dist()
    if d is None:
        return
    mine = checksum(strategy).reshape(1)
    parts = [torch.empty_like(mine) for _ in range(d.get_world_size())]
    d.all_gather(parts, mine)
    if any(not torch.equal(p, parts[0]) for p in parts):
        raise RuntimeError(
            f"The {d.get_world_size()} ranks' models differ {when} (checksums {[float(p) for p in parts]}): strategy "
            f"{type(strategy).__name__} is not data-parallel safe. Run it with one process and report it.")


def main_first(fn):
    """Run ``fn`` on rank 0 only and return its result on every rank; an exception raised there is
    raised on every rank (the same class where it takes one message, else ClError)."""
    d = _dist()
    if d is None:
        return fn()
    box = [None, None]
    err = None
    if d.get_rank() == 0:
        try:
            box[0] = fn()
        except BaseException as e:          # noqa: B902 - handed to the other ranks, then re-raised
            err, box[1] = e, (type(e), str(e))
    d.broadcast_object_list(box, src=0)
    if err is not None:
        raise err
    if box[1] is not None:
        cls, msg = box[1]
        try:
            exc = cls(msg)
        except Exception:                   # a class that takes other arguments
            exc = ClError(msg)
        raise exc
    return box[0]


class NullLog:
    """The logger of ranks other than 0: they write nothing."""

    def scalar(self, *a, **k):
        pass

    experience = domain = write_results = finish = close = scalar
