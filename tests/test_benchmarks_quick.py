"""The benchmark suite's --quick mode runs end to end (harness correctness, not timings)."""
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_benchmark_suite_quick():
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    from benchmarks.__main__ import SUITE
    for name in SUITE:
        assert f"=== {name} ===" in r.stdout
    assert "overhead" in r.stdout and "bytes/sample" in r.stdout and "s/batch" in r.stdout
    assert "channels_last / default" in r.stdout and "views batched" in r.stdout
    assert "Python self-time in cl/" in r.stdout and "prefetch speed-up" in r.stdout
    assert "| no-rewarm | 0 |" in r.stdout          # lm_rewarm_grid's table
    assert "runner vs bare" in r.stdout and "l2p vit" in r.stdout and "tokens/s" in r.stdout   # gpu_suite
    for name, env, url, ran in (("tent", "CL_TENT_REFERENCE", "DequanWang/tent", "Tent, batch"),
                                ("rmt", "CL_RMT_REFERENCE", "mariodoebler/test-time-adaptation", "RMT, batch")):
        expected = ran if os.environ.get(env) else f"skipped: pass --reference <clone of https://github.com/{url}>"
        assert expected in r.stdout, f"{name}_reference"
    try:
        import avalanche  # noqa: F401
        assert "| mlp | finetune |" in r.stdout and "| mlp | er |" in r.stdout
    except ImportError:
        assert "skipped: Avalanche is not installed" in r.stdout
