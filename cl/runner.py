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
import warnings

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from cl import faults, io, rundir
from cl.config import to_dict
from cl.errors import ConfigError, NonFiniteLossError
from cl.loggers import RunLogger
from cl.metrics import accuracy, domain_errors, summarize
from cl.models import build_model, unwrap
from cl.registry import SCENARIOS, STRATEGIES

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


def build(cfg):
    """scenario, model and (set-up) strategy from a resolved RunConfig."""
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    # Plugins get plain dataclass instances: attribute access in hot loops costs nothing.
    scenario = SCENARIOS.get(cfg.scenario.name)(OmegaConf.to_object(cfg.scenario), seed=cfg.seed)
    if cfg.test_subsample < 1:
        g = torch.Generator().manual_seed(cfg.seed)
        for exp in scenario.experiences:
            n = max(1, int(round(len(exp.test) * cfg.test_subsample)))
            exp.test = exp.test.subset(torch.randperm(len(exp.test), generator=g)[:n].sort().values)
    model = build_model(cfg.model, scenario.num_classes, scenario.input_shape)
    strategy = STRATEGIES.get(cfg.strategy.name)(
        model, OmegaConf.to_object(cfg.strategy), num_classes=scenario.num_classes, device=device, scenario=scenario, amp=cfg.amp)
    strategy.setup()
    return scenario, strategy, device


def run(cfg, run_dir, resume=False):
    """Run one experiment into ``run_dir``; returns the results dict (also in results.json)."""
    scenario, strategy, device = build(cfg)
    state = new_state(scenario)
    # Checks (folder is ours, not locked, same config and stream as the checkpoint) before anything
    # in run_dir is touched; then the lock, held until log.close().
    ckpt = rundir.open_run(run_dir, cfg, scenario, resume=resume, map_location=device)
    if ckpt is not None:
        strategy.load_state_dict(ckpt["strategy"])
        state = ckpt["state"]
    log = RunLogger(run_dir, cfg, scenario)
    loop = train_eval if scenario.protocol == "train_eval" else online
    try:
        loop(cfg, scenario, strategy, device, state, log, run_dir)
        state["status"] = "complete"
    except NonFiniteLossError as e:
        state["status"] = f"failed: {e}"
        log.write_results(results_of(cfg, scenario, strategy, state))
        log.close()
        raise
    except KeyboardInterrupt:          # Ctrl-C, or SIGTERM (the CLI turns it into KeyboardInterrupt)
        state["status"] = "interrupted"
        log.write_results(results_of(cfg, scenario, strategy, state))
        log.close()
        raise
    except BaseException:
        log.close()
        raise
    if cfg.save_model:
        io.torch_save(unwrap(strategy.model).state_dict(), os.path.join(run_dir, "model.pt"))
    results = results_of(cfg, scenario, strategy, state)
    log.finish(results)
    return results


def new_state(scenario):
    return {"next": 0, "step": 0, "status": "running", "R": [], "R_task": [], "initial": None,
            "curves": [], "domain_correct": [0] * len(scenario.domains),
            "domain_total": [0] * len(scenario.domains), "domain_matrix": [],
            "timings": {"train_s": 0.0, "eval_s": 0.0, "per_experience_s": []}}


# ---------------------------------------------------------------------------- train_eval
def train_eval(cfg, scenario, strategy, device, state, log, run_dir):
    bs, epochs = strategy.cfg.batch_size, scenario.epochs or strategy.cfg.epochs
    eval_every, log_every = cfg.eval_every, cfg.logging.log_every
    hide = cfg.hide_boundaries or scenario.hide_boundaries
    exps = scenario.experiences
    if hide and strategy.needs_boundaries:
        warnings.warn(f"{cfg.strategy.name} needs experience boundaries ({strategy.needs_boundaries}); with "
                      "hide_boundaries=true that hook is not called and it trains as plain fine-tuning.", stacklevel=2)
    if state["initial"] is None and cfg.eval_initial:
        state["initial"] = [evaluate(strategy, e, device)[0] for e in exps]
    for i in range(state["next"], len(exps)):
        exp = exps[i]
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(experience_seed(cfg.seed, i))
        seed_everything(experience_seed(cfg.seed, i))
        if not hide:
            strategy.before_experience(exp)
        data = strategy.train_data(exp)
        n_batches = data.num_batches(bs) * epochs
        bar = tqdm(total=n_batches, desc=f"experience {i + 1}/{len(exps)}", leave=False,
                   disable=not cfg.logging.progress)
        finite = FiniteCheck(device)
        for epoch in range(epochs):
            for batch in data.batches(bs, shuffle=True, generator=gen, device=device):
                loss = strategy.train_step(batch)
                state["step"] += 1
                faults.hit("step")
                finite.update(loss, state, i)
                if state["step"] % log_every == 0:
                    finite.check(state, i)
                    log.scalar("train/loss", loss.item(), state["step"])
                if eval_every and state["step"] % eval_every == 0:
                    accs = [evaluate(strategy, e, device)[0] for e in exps[: i + 1]]
                    state["curves"].append({"step": state["step"], "experience": i, "accuracy": accs})
                bar.update()
        bar.close()
        finite.check(state, i)
        if not hide:
            strategy.after_experience(exp)
        t1 = time.perf_counter()
        row = [evaluate(strategy, e, device) for e in exps]
        t2 = time.perf_counter()
        state["R"].append([a for a, _ in row])
        state["R_task"].append([a for _, a in row])
        end_experience(cfg, scenario, strategy, state, log, run_dir, i, (t0, t1, t2), log.experience)


@torch.no_grad()
def evaluate(strategy, exp, device):
    """(class-IL accuracy, task-IL accuracy) of ``strategy.predict`` on ``exp.test``."""
    correct = correct_task = total = 0
    for logits, y in strategy.predict_data(exp.test, strategy.cfg.eval_batch_size, device):
        c, ct = accuracy(logits, y, exp.classes)
        correct, correct_task, total = correct + c, correct_task + ct, total + len(y)
    return correct / max(total, 1), correct_task / max(total, 1)


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

    def update(self, loss, state, experience):
        if not self.lazy:
            value = float(loss)
            if not math.isfinite(value):
                self._fail(value, f"at step {state['step']}", experience)
        else:
            self.acc = loss.detach().float().sum() if self.acc is None else self.acc + loss.detach().float().sum()

    def check(self, state, experience):
        if self.acc is not None:
            value, self.acc = float(self.acc), None
            if not math.isfinite(value):
                self._fail(value, f"at or before step {state['step']}", experience)

    @staticmethod
    def _fail(value, when, experience):
        raise NonFiniteLossError(
            f"The loss became {value} {when} (experience {experience}). The partial results up to "
            "the last completed experience are saved. Lower strategy.lr, check the input "
            "normalization, or clip the gradients (strategy.grad_clip=1.0).")


# ---------------------------------------------------------------------------- online
def online(cfg, scenario, strategy, device, state, log, run_dir):
    bs = strategy.cfg.batch_size
    exps = scenario.experiences
    for d in range(state["next"], len(exps)):
        exp = exps[d]
        t0 = time.perf_counter()
        seed_everything(experience_seed(cfg.seed, d))
        if scenario.reset_each_shift:
            strategy.reset()
        n_groups = len(scenario.domains)
        correct = torch.zeros(n_groups, dtype=torch.long)
        total = torch.zeros(n_groups, dtype=torch.long)
        bar = tqdm(total=exp.test.num_batches(bs), desc=f"domain {exp.domain or d}", leave=False,
                   disable=not cfg.logging.progress)
        for batch in exp.test.batches(bs, device=device):
            logits = strategy.adapt(batch.x)
            state["step"] += 1
            faults.hit("step")
            g = batch.g.cpu() if batch.g is not None else torch.full((len(batch.y),), d, dtype=torch.long)
            hit = (logits.argmax(1) == batch.y).cpu()
            correct += torch.bincount(g[hit], minlength=n_groups)
            total += torch.bincount(g, minlength=n_groups)
            bar.update()
        bar.close()
        for k in range(n_groups):
            state["domain_correct"][k] += int(correct[k])
            state["domain_total"][k] += int(total[k])
        t1 = time.perf_counter()
        if cfg.eval_all_domains:
            state["domain_matrix"].append([evaluate(strategy, e, device)[0] for e in exps])
        t2 = time.perf_counter()
        end_experience(cfg, scenario, strategy, state, log, run_dir, d, (t0, t1, t2), log.domain)


# ---------------------------------------------------------------------------- results
def end_experience(cfg, scenario, strategy, state, log, run_dir, index, times, log_row):
    """Shared by both loops: timings (start, end of training/adaptation, end of evaluation),
    the checkpoint + partial results, the log row, then the ``experience`` fail point."""
    t0, t1, t2 = times
    state["timings"]["train_s"] += t1 - t0
    state["timings"]["eval_s"] += t2 - t1
    state["timings"]["per_experience_s"].append(t2 - t0)
    state["next"] = index + 1
    checkpoint(cfg, scenario, strategy, state, log, run_dir)
    log_row(index, state)
    faults.hit("experience")


def checkpoint(cfg, scenario, strategy, state, log, run_dir):
    """Checkpoint, then partial results, both written atomically."""
    io.torch_save({"version": 1, "state": state, "strategy": strategy.state_dict(),
                   "fingerprint": rundir.fingerprint(cfg, scenario)},   # checked by --resume
                  os.path.join(run_dir, CHECKPOINT))
    log.write_results(results_of(cfg, scenario, strategy, state))


def results_of(cfg, scenario, strategy, state):
    """The results.json payload (schema version 1)."""
    from cl.loggers import library_versions
    out = {
        "schema_version": 1,
        "status": state["status"],
        "name": cfg.name,
        "seed": cfg.seed,
        "protocol": scenario.protocol,
        "scenario": scenario.name,
        "strategy": cfg.strategy.name,
        "model": cfg.model.name,
        "num_experiences": len(scenario.experiences),
        "completed_experiences": state["next"],
        "domains": list(scenario.domains),
        "class_order": list(scenario.class_order),
        "config": to_dict(cfg),
        "timings": {**state["timings"], "total_s": state["timings"]["train_s"] + state["timings"]["eval_s"]},
        "strategy_results": strategy.results(),
        "versions": library_versions(),
        "threads_used": torch.get_num_threads(),
    }
    if scenario.protocol == "train_eval":
        out["accuracy_matrix"] = state["R"]
        out["task_il_accuracy_matrix"] = state["R_task"]
        out["initial_accuracy"] = state["initial"]
        out["continual_eval"] = state["curves"]
        out["metrics"] = summarize(state["R"], state["initial"], state["R_task"]) if state["R"] else {}
    else:
        errs, mean_err = domain_errors(dict(enumerate(state["domain_correct"])),
                                       dict(enumerate(state["domain_total"])))
        out["per_domain_error"] = {scenario.domains[k]: v for k, v in errs.items()}
        out["metrics"] = {"mean_error": mean_err}
        if state["domain_matrix"]:
            out["domain_accuracy_matrix"] = state["domain_matrix"]
    return out
