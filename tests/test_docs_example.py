"""The strategy example of docs/adding-a-strategy.md, run as written: task-free (hidden boundaries),
loaded by ``module:Class``, and exact through a crash after experience 1 and ``--resume``."""
import re
import sys

import pytest

from cl import faults
from cl.config import load_config
from cl.runner import run
from conftest import QUICKSTART, REPO, quick_overrides


@pytest.fixture
def example_module(tmp_path, monkeypatch):
    with open(f"{REPO}/docs/adding-a-strategy.md") as f:
        code = re.search(r"```python\n# my_pkg/ema_anchor.py\n(.*?)```", f.read(), re.S).group(1)
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ema_anchor.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [m for m in sys.modules if m.startswith("my_pkg")]:
        del sys.modules[name]


def cfg(tmp_path):
    return load_config(QUICKSTART, quick_overrides(
        tmp_path, **{"strategy.name": "my_pkg.ema_anchor:EMAAnchor", "strategy.strength": 0.5,
                     "hide_boundaries": True, "scenario.n_experiences": 2, "logging.tensorboard": False,
                     "logging.plots": False}))


def test_docs_example_runs_task_free_and_resumes_exactly(tmp_path, example_module, monkeypatch):
    full = run(cfg(tmp_path), str(tmp_path / "full"))
    assert full["status"] == "complete" and full["boundaries_visible"] is False

    def crash(point):
        if point == "experience":
            raise KeyboardInterrupt

    real = faults.hit
    monkeypatch.setattr(faults, "hit", crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(tmp_path), str(tmp_path / "crashed"))
    monkeypatch.setattr(faults, "hit", real)
    resumed = run(cfg(tmp_path), str(tmp_path / "crashed"), resume=True)
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    # the pull changes the result: strength 0 would be plain fine-tuning
    plain = run(load_config(QUICKSTART, quick_overrides(tmp_path, **{
        "hide_boundaries": True, "scenario.n_experiences": 2, "logging.tensorboard": False, "logging.plots": False})),
        str(tmp_path / "plain"))
    assert plain["accuracy_matrix"] != full["accuracy_matrix"]
