"""The stream runner: one loop per protocol, in this one file.

train_eval: for each experience -> train (epochs over its data) -> evaluate on every
            experience's test data -> one row of the accuracy matrix -> checkpoint.
online:     for each domain -> predict-then-adapt on each unlabelled batch -> error per
            domain (optionally the adapted model's accuracy on every domain) -> checkpoint.

Randomness is re-seeded from (seed, experience index) at the start of every experience, so a
run resumed from the checkpoint after experience i continues exactly as the uninterrupted run.
"""
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from cl import distributed as ddp, faults, io, rundir
from cl.config import to_dict
from cl.continual_metrics import eval_subsets, summarize_curves
from cl.errors import ConfigError, NonFiniteLossError
from cl.loggers import RunLogger
from cl.metrics import accuracy, domain_errors, summarize, summarize_lower
from cl.models import build_model, unwrap
from cl.registry import SCENARIOS, STRATEGIES
from cl.strategy import StreamInfo, resolve_epochs

CHECKPOINT = rundir.CHECKPOINT


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def experience_seed(seed, index):
    """A distinct, reproducible seed per (run seed, experience)."""
    return (seed * 1_000_003 + index * 7919 + 17) % 2**31


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use device=cpu or device=auto.")
    return device


@dataclass
class Task:
    """One distinct evaluation set of the stream: a column of the accuracy matrix."""
    key: str
    name: str
    test: object                  # TensorData evaluated (after test_subsample)
    classes: list
    experiences: list             # indices of the experiences that train on it


@dataclass
class RunState:
    """Everything the loops accumulate; checkpointed after every experience (plain types only)."""
    next: int = 0                                  # index of the next experience to run
    step: int = 0                                  # training / adaptation steps taken
    status: str = "running"
    R: list = field(default_factory=list)          # accuracy matrix: row per experience, column per task
    R_task: list = field(default_factory=list)     # task-IL accuracy matrix
    initial: Optional[list] = None                 # initial model's accuracy per task
    initial_task: Optional[list] = None            # initial model's task-IL accuracy per task (zero-shot, MTIL)
    curves: list = field(default_factory=list)     # continual evaluation: {step, experience, task, accuracy}
    lr: list = field(default_factory=list)         # [step, lr of that step] every logging.log_every steps
    domain_correct: list = field(default_factory=list)
    domain_total: list = field(default_factory=list)
    domain_matrix: list = field(default_factory=list)
    class_correct: list = field(default_factory=list)   # online: correct predictions per true class
    class_total: list = field(default_factory=list)
    steps: list = field(default_factory=list)      # multi-label: {map, cf1, of1} after each experience
    timings: dict = field(default_factory=lambda: {"train_s": 0.0, "eval_s": 0.0, "continual_eval_s": 0.0,
                                                   "per_experience_s": []})

    @classmethod
    def new(cls, scenario):
        n = len(scenario.domains)
        return cls(domain_correct=[0] * n, domain_total=[0] * n)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Run:
    """One run's parts, passed to the loops as one argument."""
    cfg: object
    scenario: object
    strategy: object
    device: torch.device
    stream: StreamInfo
    tasks: list                   # [Task], the matrix columns in order of first appearance
    task_of: list                 # column index of each experience
    state: RunState = None
    log: object = None
    run_dir: str = ""
    reference: Optional[list] = None   # accuracy matrix of a reference (joint) run, for intransigence
    test_all: object = None            # multi-label: the whole test set (after test_subsample)


def task_plan(scenario, test_subsample, seed):
    """The distinct evaluation sets (experiences with the same ``task_key`` share one; a recurring
    task is one column) and the column of each experience. ``test_subsample`` < 1 evaluates on a
    seeded fraction of each set; the online stream itself is never shortened."""
    tasks, task_of, by_key = [], [], {}
    g = torch.Generator().manual_seed(seed)
    for exp in scenario.experiences:
        key = str(exp.index if exp.task_key is None else exp.task_key)
        if key not in by_key:
            test = exp.test
            if test_subsample < 1:
                n = max(1, int(round(len(test) * test_subsample)))
                test = test.subset(torch.randperm(len(test), generator=g)[:n].sort().values)
            by_key[key] = len(tasks)
            name = str(exp.task_key) if exp.task_key is not None else (exp.domain or f"exp{exp.index}")
            tasks.append(Task(key, name, test, list(exp.classes), []))
        tasks[by_key[key]].experiences.append(exp.index)
        task_of.append(by_key[key])
    return tasks, task_of


def stream_info(cfg, scenario, strategy_cls):
    """The StreamInfo of this run: what the strategy may know of the stream before it starts."""
    c = cfg.strategy
    default_epochs = {f.name: f.default for f in fields(strategy_cls.Config)}.get("epochs", 1)
    epochs = 1 if scenario.protocol == "online" else resolve_epochs(scenario.epochs, c, default_epochs)
    return StreamInfo.of(scenario, c.batch_size, epochs, hide_boundaries=cfg.hide_boundaries)


def build(cfg):
    """A ``Run`` (scenario, model, set-up strategy, stream info, task plan) from a resolved RunConfig.
    Every check that can fail before training happens here, before anything is written."""
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    # Plugins get plain dataclass instances: attribute access in hot loops costs nothing.
    scenario = SCENARIOS.get(cfg.scenario.name)(OmegaConf.to_object(cfg.scenario), seed=cfg.seed)
    tasks, task_of = task_plan(scenario, cfg.test_subsample, cfg.seed)
    strategy_cls = STRATEGIES.get(cfg.strategy.name)
    ddp.check(cfg, scenario, strategy_cls)          # torchrun: refused before anything is built or written
    stream = stream_info(cfg, scenario, strategy_cls)
    model = build_model(cfg.model, scenario.num_classes, scenario.input_shape,
                        class_names=scenario.class_names, class_templates=scenario.class_templates)
    if scenario.protocol not in strategy_cls.protocols:
        raise ConfigError(
            f"Strategy '{cfg.strategy.name}' implements the {' and '.join(strategy_cls.protocols)} protocol, but scenario "
            f"'{cfg.scenario.name}' is {scenario.protocol} ({'predict-then-adapt on unlabelled batches' if scenario.protocol == 'online' else 'train on labelled experiences, then evaluate'}). "
            "Choose a strategy for this protocol (cl list) or a scenario of the other kind.")
    if scenario.label_type not in getattr(strategy_cls, "label_types", ("single",)):
        raise ConfigError(
            f"Strategy '{cfg.strategy.name}' trains on single class labels only, but scenario '{cfg.scenario.name}' "
            "is multi-label (multi-hot targets, mAP). Choose a strategy that declares label_types with 'multi' "
            "(finetune, er, l2p, dualprompt, coda_prompt, multi_lane; see docs/multi-label.md) or a "
            "single-label scenario.")
    strategy = strategy_cls(model, OmegaConf.to_object(cfg.strategy), stream=stream, device=device,
                            amp=cfg.amp and cfg.amp_dtype)
    if not stream.boundaries_visible and stream.protocol == "train_eval" and strategy.needs_boundaries:
        raise ConfigError(
            f"Strategy '{cfg.strategy.name}' needs the experience boundaries ({strategy.needs_boundaries}), but "
            f"this run hides them (hide_boundaries=true in the run config or scenario "
            f"'{cfg.scenario.name}'). Set hide_boundaries=false (and scenario.hide_boundaries=false where the "
            "scenario has it), or choose a task-free strategy (e.g. er, nmc, kfpf).")
    ddp.check(cfg, scenario, strategy_cls, strategy, model)
    reference = load_reference(cfg.reference_run, len(scenario.experiences), len(tasks)) if cfg.reference_run else None
    strategy.setup(source=scenario.source)
    if cfg.compile:
        strategy.model.compile()                        # in place: same module, same state_dict keys
    ddp.check_in_sync(strategy, "after set-up")
    return Run(cfg, scenario, strategy, device, stream, tasks, task_of, reference=reference,
               test_all=multilabel_test_set(scenario, cfg.test_subsample, cfg.seed))


def multilabel_test_set(scenario, test_subsample, seed):
    """Multi-label scenarios: the whole test set (a seeded fraction with test_subsample < 1); else None."""
    if scenario.label_type != "multi":
        return None
    test = scenario.test_all
    if test is None:
        raise ConfigError(f"Multi-label scenario '{scenario.name}' gives no test_all (its whole test set): the "
                          "scenario generator must set Scenario.test_all (see docs/multi-label.md).")
    if test_subsample < 1:
        g = torch.Generator().manual_seed(seed + 1)
        n = max(1, int(round(len(test) * test_subsample)))
        test = test.subset(torch.randperm(len(test), generator=g)[:n].sort().values)
    return test


def load_reference(path, n_experiences, n_tasks):
    """The accuracy matrix of a reference run's results.json (a ``joint`` run of the same stream)."""
    import json
    try:
        with open(path) as f:
            R = json.load(f)["accuracy_matrix"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"Cannot read the reference run '{path}' ({e}). reference_run must be the results.json "
                          "of a completed run of the same stream (usually strategy=joint).") from None
    if len(R) != n_experiences or any(len(r) != n_tasks for r in R):
        raise ConfigError(f"The reference run '{path}' has a {len(R)}-row accuracy matrix; this stream needs "
                          f"{n_experiences} rows of {n_tasks} tasks. Use a completed run of the same scenario and seed.")
    return R


def run(cfg, run_dir, resume=False):
    """Run one experiment into ``run_dir``; returns the results dict (also in results.json)."""
    r = build(cfg)
    r.state, r.run_dir = RunState.new(r.scenario), run_dir
    # Checks (the folder is ours, not locked, same config and stream as the checkpoint) before
    # anything in run_dir is touched; then the lock, held until r.log.close().
    opened = {}

    def open_folder():
        opened["ckpt"] = rundir.open_run(run_dir, cfg, r.scenario, resume=resume, map_location=r.device)
        return opened["ckpt"] is not None

    has_ckpt = ddp.main_first(open_folder)      # torchrun: rank 0 checks and writes, the others read the checkpoint
    ckpt = opened.get("ckpt") if ddp.is_main() else (
        io.torch_load(os.path.join(run_dir, CHECKPOINT), map_location=r.device) if has_ckpt else None)
    if ckpt is not None:
        r.strategy.load_state_dict(ckpt["strategy"])
        r.state = RunState.from_dict(ckpt["state"])
    r.log = RunLogger(run_dir, cfg, r.scenario) if ddp.is_main() else ddp.NullLog()
    loop = train_eval if r.scenario.protocol == "train_eval" else online
    try:
        loop(r)
        r.state.status = "complete"
    except NonFiniteLossError as e:
        r.state.status = f"failed: {e}"
        r.log.write_results(results_of(r))
        r.log.close()
        raise
    except KeyboardInterrupt:          # Ctrl-C, or SIGTERM (the CLI turns it into KeyboardInterrupt)
        r.state.status = "interrupted"
        r.log.write_results(results_of(r))
        r.log.close()
        raise
    except BaseException:
        r.log.close()
        raise
    if cfg.save_model and ddp.is_main():
        io.torch_save(unwrap(r.strategy.model).state_dict(), os.path.join(run_dir, "model.pt"))
    results = results_of(r)
    r.log.finish(results)
    return results


# ---------------------------------------------------------------------------- train_eval
def train_eval(r):
    cfg, strategy, device, state, stream = r.cfg, r.strategy, r.device, r.state, r.stream
    bs, epochs = stream.batch_size, stream.epochs
    eval_every, log_every = cfg.eval_every, cfg.logging.log_every
    exps = r.scenario.experiences
    metric = r.scenario.metric                  # accuracy, or loss (token scenarios: lower is better)
    count_tokens = metric == "loss"
    if state.initial is None and cfg.eval_initial:
        row = [evaluate(strategy, t, device, metric) for t in r.tasks]
        state.initial, state.initial_task = [a for a, _ in row], [a for _, a in row]
    probes = eval_subsets(r.tasks, cfg.eval_subset, cfg.seed) if eval_every else None   # fixed, seeded
    for i in range(state.next, len(exps)):
        exp = exps[i]
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(experience_seed(cfg.seed, i))
        seed_everything(experience_seed(cfg.seed, i))
        if stream.boundaries_visible:
            strategy.before_experience(exp)
        data = strategy.train_data(exp)
        bar = tqdm(total=data.num_batches(bs) * epochs, desc=f"experience {i + 1}/{len(exps)}", leave=False,
                   disable=not cfg.logging.progress or not ddp.is_main())
        finite = FiniteCheck(device)
        seen = [p for p in probes if p.experiences[0] <= i] if eval_every else []
        tokens = 0
        for epoch in range(epochs):
            for batch in data.batches(bs, shuffle=True, generator=gen, device=device):
                with ddp.sharded_forward(strategy):      # torchrun: this rank's rows of each model call
                    loss = strategy.train_step(batch)
                state.step += 1
                if count_tokens:
                    tokens += batch.y.numel()
                faults.hit("step")
                finite.update(loss, state.step, i)
                if state.step % log_every == 0:
                    finite.check(state.step, i)
                    r.log.scalar("train/loss", loss.item(), state.step)
                    log_lr(r)
                    if count_tokens:
                        r.log.scalar("train/tokens_per_s", tokens / (time.perf_counter() - t0), state.step)
                if eval_every and state.step % eval_every == 0:
                    continual_eval(r, seen, i)
                bar.update()
        bar.close()
        if eval_every and (not state.curves or state.curves[-1]["step"] != state.step):
            continual_eval(r, seen, i)           # the last step before the boundary
        finite.check(state.step, i)
        if stream.boundaries_visible:
            strategy.after_experience(exp)
        t1 = time.perf_counter()
        if count_tokens:
            state.timings["train_tokens"] = state.timings.get("train_tokens", 0) + tokens
        if metric == "map":                     # multi-label: one pass over the test set for the whole row
            row = [(a, a) for a in multilabel_row(r, i)]
        else:
            row = [evaluate(strategy, t, device, metric) for t in r.tasks]
        t2 = time.perf_counter()
        state.R.append([a for a, _ in row])
        state.R_task.append([a for _, a in row])
        seen = sorted({r.task_of[k] for k in range(i + 1)})
        end_experience(r, i, (t0, t1, t2), lambda: r.log.experience(i, state, seen))


def continual_eval(r, probes, i):
    """One record of the continual-evaluation curve: accuracy on each seen task's fixed subset, timed."""
    t = time.perf_counter()
    metric = r.scenario.metric                  # accuracy, or loss (token scenarios)
    accs = [evaluate(r.strategy, p, r.device, metric)[0] for p in probes]
    r.state.curves.append({"step": r.state.step, "experience": i, "task": r.task_of[i], metric: accs})
    timings = r.state.timings
    timings["continual_eval_s"] = timings.get("continual_eval_s", 0.0) + time.perf_counter() - t


def log_lr(r):
    """The lr of the last step: TensorBoard ``train/lr`` and results ``lr`` ([step, lr] pairs)."""
    lr = r.strategy.current_lr()
    if lr is not None:
        r.log.scalar("train/lr", lr, r.state.step)
        r.state.lr.append([r.state.step, lr])


@torch.no_grad()
def evaluate(strategy, task, device, metric="accuracy"):
    """(class-IL accuracy, task-IL accuracy) of ``strategy.predict`` on ``task.test`` (a Task or an
    Experience: anything with ``test`` and ``classes``). ``metric="loss"`` (token scenarios): the
    mean next-token loss over the fixed evaluation windows, twice."""
    if metric == "loss":
        from cl.tokens import mean_token_loss
        loss = mean_token_loss(strategy, task.test, strategy.cfg.eval_batch_size, device, strategy.num_classes)
        return loss, loss
    if metric == "map":                         # multi-label: mAP over the task's classes, twice
        from cl.multilabel import task_map
        scores, targets = predict_all(strategy, task.test, device)
        value = task_map(scores, targets, task.classes)
        return value, value
    correct = correct_task = total = 0
    for logits, y in strategy.predict_data(ddp.eval_shard(task.test), strategy.cfg.eval_batch_size, device):
        c, ct = accuracy(logits, y, task.classes)
        correct, correct_task, total = correct + c, correct_task + ct, total + len(y)
    correct, correct_task, total = ddp.sum_counts(correct, correct_task, total)    # torchrun: over the ranks' shards
    return correct / max(total, 1), correct_task / max(total, 1)


@torch.no_grad()
def predict_all(strategy, data, device):
    """(scores [N, C], targets [N, C]) of ``strategy.predict`` on ``data``, on the CPU."""
    scores, targets = [], []
    for logits, y in strategy.predict_data(data, strategy.cfg.eval_batch_size, device):
        scores.append(logits.float().cpu())
        targets.append(y.cpu())
    return torch.cat(scores), torch.cat(targets)


def multilabel_row(r, i):
    """Multi-label: one prediction pass over the whole test set after experience ``i``: the row of
    the mAP matrix (each task's mAP on its own samples) and the authors' step metrics (mAP, CF1,
    OF1 over the classes seen so far, on the samples holding one of them)."""
    from cl.multilabel import step_metrics, task_map
    scores, targets = predict_all(r.strategy, r.test_all, r.device)
    row = [task_map(scores, targets, t.classes) for t in r.tasks]
    seen = sorted({c for k in range(i + 1) for c in r.scenario.experiences[k].classes})
    r.state.steps.append(step_metrics(scores, targets, seen))
    return row


class FiniteCheck:
    """Stop on a NaN/inf loss without a device sync per step.

    On the CPU each loss is checked as it comes (reading a CPU scalar costs nothing). On an
    accelerator the losses are summed on the device (a non-finite value keeps the sum non-finite)
    and the sum is read only at ``check`` (every ``logging.log_every`` steps and at the end of the
    experience), so the run stops at most that many steps late; the results saved are those of the
    last completed experience either way.
    """

    def __init__(self, device):
        self.lazy = torch.device(device).type != "cpu"
        self.acc = None

    def update(self, loss, step, experience):
        if not self.lazy:
            value = float(loss)
            if not math.isfinite(value):
                self._fail(value, f"at step {step}", experience)
        else:
            self.acc = loss.detach().float().sum() if self.acc is None else self.acc + loss.detach().float().sum()

    def check(self, step, experience):
        if self.acc is not None:
            value, self.acc = float(self.acc), None
            if not math.isfinite(value):
                self._fail(value, f"at or before step {step}", experience)

    @staticmethod
    def _fail(value, when, experience):
        raise NonFiniteLossError(
            f"The loss became {value} {when} (experience {experience}). The partial results up to "
            "the last completed experience are saved. Lower strategy.lr, check the input "
            "normalization, or clip the gradients (strategy.grad_clip=1.0).")


# ---------------------------------------------------------------------------- online
def online(r):
    cfg, strategy, device, state = r.cfg, r.strategy, r.device, r.state
    bs = r.stream.batch_size
    exps = r.scenario.experiences
    n_groups = len(r.scenario.domains)
    k_classes = r.scenario.num_classes
    if not state.class_total:          # per-class counts (balanced error under label shift)
        state.class_correct, state.class_total = [0] * k_classes, [0] * k_classes
    for d in range(state.next, len(exps)):
        exp = exps[d]
        t0 = time.perf_counter()
        seed_everything(experience_seed(cfg.seed, d))
        if r.stream.reset_each_shift:
            strategy.reset()
        correct = torch.zeros(n_groups, dtype=torch.long)
        total = torch.zeros(n_groups, dtype=torch.long)
        class_correct = torch.zeros(k_classes, dtype=torch.long)
        class_total = torch.zeros(k_classes, dtype=torch.long)
        bar = tqdm(total=exp.test.num_batches(bs), desc=f"domain {exp.domain or d}", leave=False,
                   disable=not cfg.logging.progress or not ddp.is_main())
        for batch in exp.test.batches(bs, device=device):
            logits = strategy.adapt(batch.x)
            state.step += 1
            faults.hit("step")
            if state.step % cfg.logging.log_every == 0:
                log_lr(r)
            g = batch.g.cpu() if batch.g is not None else torch.full((len(batch.y),), d, dtype=torch.long)
            hit = (logits.argmax(1) == batch.y).cpu()
            correct += torch.bincount(g[hit], minlength=n_groups)
            total += torch.bincount(g, minlength=n_groups)
            y = batch.y.cpu()
            class_correct += torch.bincount(y[hit], minlength=k_classes)
            class_total += torch.bincount(y, minlength=k_classes)
            bar.update()
        bar.close()
        for k in range(n_groups):
            state.domain_correct[k] += int(correct[k])
            state.domain_total[k] += int(total[k])
        for k in range(k_classes):
            state.class_correct[k] += int(class_correct[k])
            state.class_total[k] += int(class_total[k])
        t1 = time.perf_counter()
        if cfg.eval_all_domains:
            state.domain_matrix.append([evaluate(strategy, t, device)[0] for t in r.tasks])
        t2 = time.perf_counter()
        end_experience(r, d, (t0, t1, t2), lambda: r.log.domain(d, state))


# ---------------------------------------------------------------------------- results
def end_experience(r, index, times, log_row):
    """Shared by both loops: timings (start, end of training/adaptation, end of evaluation),
    the checkpoint + partial results, the log row, then the ``experience`` fail point."""
    t0, t1, t2 = times
    timings = r.state.timings
    timings["train_s"] += t1 - t0
    timings["eval_s"] += t2 - t1
    timings["per_experience_s"].append(t2 - t0)
    r.state.next = index + 1
    ddp.check_in_sync(r.strategy, f"after experience {index}")
    checkpoint(r)
    log_row()
    faults.hit("experience")


def checkpoint(r):
    """Checkpoint, then partial results, both written atomically."""
    if not ddp.is_main():               # torchrun: rank 0 alone writes
        return
    io.torch_save({"version": 2, "state": asdict(r.state), "strategy": r.strategy.state_dict(),
                   "fingerprint": rundir.fingerprint(r.cfg, r.scenario)},     # checked by --resume
                  os.path.join(r.run_dir, CHECKPOINT))
    r.log.write_results(results_of(r))


def multilabel_results(r):
    """results.json entries of a multi-label run (docs/multi-label.md): the mAP matrix, the per-step
    mAP/CF1/OF1 and their averages, forgetting on the mAP matrix."""
    from cl.metrics import backward_transfer, forgetting
    state = r.state
    out = {"metric": "map", "map_matrix": state.R, "initial_map": state.initial,
           "map_per_step": [s["map"] for s in state.steps], "cf1_per_step": [s["cf1"] for s in state.steps],
           "of1_per_step": [s["of1"] for s in state.steps], "continual_eval": state.curves,
           "test_images": len(r.test_all) if r.test_all is not None else 0}
    m = {}
    if state.steps:
        for k in ("map", "cf1", "of1"):
            m[k] = state.steps[-1][k]                                   # after the last experience
            m[f"average_{k}"] = float(np.mean([s[k] for s in state.steps]))   # the authors' "amAP" for map
    if state.R:
        full = summarize(state.R, trained=r.task_of)
        m["average_task_map"] = full["average_accuracy"]
        m["forgetting"] = forgetting(state.R, r.task_of)
        m["backward_transfer"] = backward_transfer(state.R, r.task_of)
        m["last"] = full["last"]
    curve_metrics, out["continual_metrics"] = summarize_curves([{**c, "accuracy": c["map"]} for c in state.curves])
    m.update(curve_metrics)
    out["metrics"] = m
    return out


def token_throughput(timings):
    """Training tokens per second of wall time (training loop plus the boundary hooks), token scenarios."""
    if "train_tokens" not in timings:
        return {}
    return {"tokens_per_s": timings["train_tokens"] / max(timings["train_s"], 1e-9)}


def results_of(r):
    """The results.json payload (schema version 2: matrix columns are the distinct tasks)."""
    from cl.loggers import library_versions
    cfg, scenario, state = r.cfg, r.scenario, r.state
    out = {
        "schema_version": 2,
        "status": state.status,
        "name": cfg.name,
        "seed": cfg.seed,
        "protocol": scenario.protocol,
        "scenario": scenario.name,
        "strategy": cfg.strategy.name,
        "model": cfg.model.name,
        "num_experiences": len(scenario.experiences),
        "completed_experiences": state.next,
        "epochs_per_experience": r.stream.epochs,
        "boundaries_visible": r.stream.boundaries_visible,
        "tasks": [{"key": t.key, "name": t.name, "experiences": t.experiences} for t in r.tasks],
        "task_of_experience": r.task_of,
        "domains": list(scenario.domains),
        "class_order": list(scenario.class_order),
        "config": to_dict(cfg),
        "timings": {**state.timings, "total_s": state.timings["train_s"] + state.timings["eval_s"],
                    **token_throughput(state.timings)},
        "lr": state.lr,
        "strategy_results": r.strategy.results(),
        "versions": library_versions(),
        "threads_used": torch.get_num_threads(),
    }
    if scenario.protocol == "train_eval" and scenario.metric == "loss":
        from cl.tokens import perplexity
        out["metric"] = "loss"
        out["loss_matrix"] = state.R
        out["perplexity_matrix"] = [[perplexity(v) for v in row] for row in state.R]
        out["initial_loss"] = state.initial
        out["domain_stats"] = getattr(scenario, "stats", {})       # tokens available / used / budget per domain
        out["continual_eval"] = state.curves
        out["metrics"] = summarize_lower(state.R, state.initial, trained=r.task_of) if state.R else {}
        curve_metrics, out["continual_metrics"] = summarize_curves(     # same definitions, worst = highest loss
            [{**c, "accuracy": c["loss"]} for c in state.curves], higher_is_better=False)
        out["metrics"].update(curve_metrics)
    elif scenario.protocol == "train_eval" and scenario.metric == "map":
        out.update(multilabel_results(r))
    elif scenario.protocol == "train_eval":
        out["accuracy_matrix"] = state.R
        out["task_il_accuracy_matrix"] = state.R_task
        out["initial_accuracy"] = state.initial
        out["initial_task_il_accuracy"] = state.initial_task
        out["continual_eval"] = state.curves
        out["metrics"] = summarize(state.R, state.initial, state.R_task, trained=r.task_of,
                                   reference=r.reference) if state.R else {}
        curve_metrics, out["continual_metrics"] = summarize_curves(state.curves)
        out["metrics"].update(curve_metrics)
    else:
        errs, mean_err = domain_errors(dict(enumerate(state.domain_correct)),
                                       dict(enumerate(state.domain_total)))
        out["per_domain_error"] = {scenario.domains[k]: v for k, v in errs.items()}
        out["metrics"] = {"mean_error": mean_err}
        if state.class_total:              # error per true class over the whole stream; their mean
            class_errs, balanced = domain_errors(dict(enumerate(state.class_correct)),
                                                 dict(enumerate(state.class_total)))
            out["per_class_error"] = class_errs
            out["metrics"]["balanced_error"] = balanced
        if state.domain_matrix:
            out["domain_accuracy_matrix"] = state.domain_matrix
    return out
