import json
import os

import pytest
import torch

from cl.cli import main
from cl.config import load_config
from cl.errors import NonFiniteLossError
from cl.runner import run
from conftest import QUICKSTART, quick_overrides


def run_dir_of(tmp_path, name="quickstart"):
    (d,) = [os.path.join(tmp_path, name, x) for x in os.listdir(os.path.join(tmp_path, name))]
    return d


def load_results(d):
    with open(os.path.join(d, "results.json")) as f:
        return json.load(f)


def test_quickstart_writes_everything_and_shows_forgetting(tmp_path, capsys):
    assert main(["run", QUICKSTART, "output_dir=" + str(tmp_path), "logging.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "Accuracy matrix" in out
    d = run_dir_of(tmp_path)
    for f in ("config.yaml", "results.json", "metrics.csv", "plots/accuracy_matrix.png", "checkpoints/last.pt"):
        assert os.path.isfile(os.path.join(d, f)), f
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(d))
    res = load_results(d)
    R = res["accuracy_matrix"]
    assert res["status"] == "complete" and len(R) == 5 and len(R[0]) == 5
    assert R[4][4] > 0.8                       # learns the last experience
    assert res["metrics"]["forgetting"] > 0.5  # and forgets the earlier ones (finetune)
    assert res["metrics"]["task_il_average_accuracy"] > res["metrics"]["average_accuracy"]
    assert res["config"]["strategy"]["lr"] == 0.05
    assert "metric,after_experience,experience,value" in open(os.path.join(d, "metrics.csv")).read()


def test_same_seed_identical_metrics(tmp_path):
    cfg = load_config(QUICKSTART, quick_overrides(tmp_path, **{"strategy.epochs": 2, "logging.tensorboard": False,
                                                               "logging.plots": False}))
    a = run(cfg, str(tmp_path / "a"))
    b = run(cfg, str(tmp_path / "b"))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    c = run(load_config(QUICKSTART, quick_overrides(tmp_path, seed=1, **{"strategy.epochs": 2})), str(tmp_path / "c"))
    assert c["accuracy_matrix"] != a["accuracy_matrix"]


class Crash(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(tmp_path, monkeypatch):
    over = quick_overrides(tmp_path, **{"strategy.epochs": 2, "strategy.momentum": 0.9, "logging.tensorboard": False})
    cfg = load_config(QUICKSTART, over)
    full = run(cfg, str(tmp_path / "full"))

    from strategies.finetune import Finetune
    original = Finetune.before_experience

    def crash_at_3(self, exp):
        if exp.index == 2:
            raise Crash()
        return original(self, exp)

    monkeypatch.setattr(Finetune, "before_experience", crash_at_3)
    with pytest.raises(Crash):
        run(cfg, str(tmp_path / "killed"))
    partial = load_results(str(tmp_path / "killed"))
    assert partial["status"] == "running" and partial["completed_experiences"] == 2
    monkeypatch.setattr(Finetune, "before_experience", original)
    assert main(["run", "--resume", str(tmp_path / "killed"), "logging.console=false"]) == 0
    resumed = load_results(str(tmp_path / "killed"))
    assert resumed["status"] == "complete"
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]


def test_nan_loss_stops_with_partial_results(tmp_path, monkeypatch, capsys):
    from strategies.finetune import Finetune

    def nan_loss(self, batch):
        out = self.model(batch.x).sum() * 0
        return out + (float("nan") if self.scenario_index == 1 else 0.0)

    def before(self, exp):
        self.scenario_index = exp.index

    monkeypatch.setattr(Finetune, "loss", nan_loss)
    monkeypatch.setattr(Finetune, "before_experience", before)
    code = main(["run", QUICKSTART] + quick_overrides(tmp_path))
    assert code == 2
    assert "loss became nan" in capsys.readouterr().err
    res = load_results(run_dir_of(tmp_path))
    assert res["status"].startswith("failed") and len(res["accuracy_matrix"]) == 1


def test_online_protocol_reports_per_domain_error(tmp_path):
    cfg = load_config(None, quick_overrides(tmp_path, **{
        "scenario.name": "synthetic_shift", "strategy.name": "source", "model.name": "small_cnn",
        "eval_all_domains": True, "strategy.batch_size": 64}))
    res = run(cfg, str(tmp_path / "o"))
    assert list(res["per_domain_error"]) == ["shift0", "shift1", "shift2"]
    assert 0 <= res["metrics"]["mean_error"] <= 1
    assert len(res["domain_accuracy_matrix"]) == 3 and len(res["domain_accuracy_matrix"][0]) == 3


def test_saved_model_is_the_next_runs_starting_point(tmp_path):
    over = quick_overrides(tmp_path, **{"scenario.n_experiences": 1, "save_model": True, "logging.tensorboard": False})
    first = run(load_config(QUICKSTART, over), str(tmp_path / "src"))
    model_path = tmp_path / "src" / "model.pt"
    assert model_path.is_file()
    over2 = quick_overrides(tmp_path, **{"scenario.n_experiences": 1, "model.checkpoint": str(model_path),
                                         "logging.tensorboard": False})
    second = load_config(QUICKSTART, over2)
    from cl.runner import build
    strategy = build(second).strategy
    state = torch.load(model_path, weights_only=True)
    for k, v in strategy.model.state_dict().items():
        assert torch.equal(v, state[k])
    assert first["accuracy_matrix"][0][0] > 0.5


def test_run_folder_never_overwritten_and_name_cannot_escape(tmp_path):
    from cl.rundir import new_run_dir
    a = new_run_dir(str(tmp_path / "out"), "../../etc")
    b = new_run_dir(str(tmp_path / "out"), "../../etc")
    assert a != b
    for d in (a, b):
        assert os.path.commonpath([str(tmp_path / "out"), d]) == str(tmp_path / "out")


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["run", QUICKSTART, f"output_dir={blocker}/sub", "logging.progress=false"])
    assert code == 2
    assert "output_dir" in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_grad_clip_bounds_the_update_and_zero_means_off():
    """One SGD step (lr 1, no momentum) on a huge loss: with grad_clip=c the update's global norm
    is exactly c; with 0 it is the raw gradient's norm."""
    from omegaconf import OmegaConf
    from cl.config import StrategyConfig
    from cl.data import Batch
    from cl.strategy import Strategy

    def update_norm(clip):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        s = Strategy(model, OmegaConf.to_object(OmegaConf.structured(StrategyConfig(name="finetune", lr=1.0,
                                                                                       grad_clip=clip))),
                     num_classes=3)
        s.setup()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        s.train_step(Batch(100 * torch.randn(8, 4), torch.randint(0, 3, (8,))))
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()

    assert abs(update_norm(0.5) - 0.5) < 1e-5
    assert update_norm(0.0) > 5.0
