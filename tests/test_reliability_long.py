"""Long streams keep flat memory, no leaked file handles, bounded TensorBoard files.

A test-time adaptation stream of 15 domains repeated 10 times (150 domains) with Tent, and a
class-incremental stream of 100 experiences, both on tiny models. Resident memory is sampled
after every experience; growth after the warm-up must stay small (asserted loosely: allocator
noise is not a leak, a per-experience leak of model/optimizer copies would be).
"""
import os

import pytest

from cl.config import load_config
from cl.loggers import RunLogger
from cl.runner import run


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def probe(monkeypatch):
    samples = []
    for hook in ("experience", "domain"):
        original = getattr(RunLogger, hook)

        def wrapped(self, *args, original=original):
            original(self, *args)
            samples.append((rss_mb(), open_fds()))

        monkeypatch.setattr(RunLogger, hook, wrapped)
    return samples


def check_flat(samples, warmup, max_growth_mb):
    rss = [s[0] for s in samples]
    fds = [s[1] for s in samples]
    growth = max(rss[warmup:]) - rss[warmup]
    assert growth < max_growth_mb, f"RSS grew {growth:.1f} MB after warm-up: {rss[warmup::10]}"
    assert max(fds[warmup:]) <= fds[warmup] + 2, f"file handles grew: {fds[warmup::10]}"


def check_tb(run_dir, max_files=1, max_bytes=2_000_000):
    events = [f for f in os.listdir(run_dir) if f.startswith("events.out.tfevents")]
    assert 1 <= len(events) <= max_files
    assert sum(os.path.getsize(os.path.join(run_dir, f)) for f in events) < max_bytes


@pytest.mark.slow
def test_tta_stream_of_150_domains(tmp_path, probe):
    cfg = load_config(None, [
        "scenario.name=synthetic_shift", "scenario.n_domains=150", "scenario.n_per_class=16", "scenario.shift=0.002",
        "model.name=small_cnn", "model.args.width=8", "strategy.name=tent", "strategy.batch_size=32",
        f"output_dir={tmp_path}", "logging.progress=false", "logging.console=false", "logging.plots=false"])
    res = run(cfg, str(tmp_path / "tta"))
    assert res["status"] == "complete" and len(res["per_domain_error"]) == 150
    check_flat(probe, warmup=20, max_growth_mb=40)
    check_tb(str(tmp_path / "tta"))


@pytest.mark.slow
def test_class_incremental_stream_of_100_experiences(tmp_path, probe):
    cfg = load_config(None, [
        "scenario.name=class_split", "scenario.dataset=synthetic", "scenario.n_experiences=100",
        "scenario.dataset_args={num_classes: 100, n_train: 8, n_test: 4, shape: [1, 4, 4]}",
        "model.name=mlp", "model.args.hidden=16", "strategy.name=finetune", "strategy.batch_size=8",
        "eval_initial=false", f"output_dir={tmp_path}", "logging.progress=false", "logging.console=false",
        "logging.plots=false"])
    res = run(cfg, str(tmp_path / "ci"))
    assert res["status"] == "complete" and len(res["accuracy_matrix"]) == 100
    check_flat(probe, warmup=20, max_growth_mb=40)
    check_tb(str(tmp_path / "ci"))
