"""Our accuracy matrix and forgetting against Avalanche's metrics on the same tiny stream.

Our runner trains fine-tuning on the digits split and keeps the model after each experience.
Avalanche then evaluates those same models (loaded into a Naive strategy whose "training" uses
lr=0, so the weights stay ours) with its accuracy and forgetting metrics. Avalanche's
experience forgetting is (accuracy right after training j) - (last accuracy on j), i.e.
R[j, j] - R[T-1, j]; that equals Chaudhry's forgetting whenever the best accuracy on j is the one
right after training j, which holds here (asserted) and equals -BWT.
"""
import copy

import numpy as np
import pytest
import torch

avalanche = pytest.importorskip("avalanche")

from cl.config import load_config  # noqa: E402
from cl.metrics import backward_transfer, forgetting  # noqa: E402
from cl.runner import build, run  # noqa: E402
from conftest import QUICKSTART, quick_overrides  # noqa: E402


def test_accuracy_matrix_and_forgetting_match_avalanche(tmp_path, monkeypatch):
    from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import \
        create_generic_benchmark_from_tensor_lists
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive
    from strategies.finetune import Finetune

    snapshots = []
    monkeypatch.setattr(Finetune, "after_experience",
                        lambda self, exp: snapshots.append(copy.deepcopy(self.model.state_dict())))
    over = quick_overrides(tmp_path, **{"strategy.epochs": 3, "logging.tensorboard": False,
                                        "logging.plots": False})
    cfg = load_config(QUICKSTART, over)
    ours = run(cfg, str(tmp_path / "run"))
    R = ours["accuracy_matrix"]
    T = len(R)

    built = build(cfg)
    scenario, strategy = built.scenario, built.strategy
    model = strategy.model
    bench = create_generic_benchmark_from_tensor_lists(
        train_tensors=[[e.train.x, e.train.y] for e in scenario.experiences],
        test_tensors=[[e.test.x, e.test.y] for e in scenario.experiences],
        task_labels=[0] * T)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True),
                                 forgetting_metrics(experience=True, stream=True), loggers=[])
    naive = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), train_mb_size=64,
                  train_epochs=1, eval_mb_size=256, device="cpu", evaluator=evaluator)
    R_av = []
    for i, exp in enumerate(bench.train_stream):
        model.load_state_dict(snapshots[i])
        naive.train(exp)
        res = naive.eval(bench.test_stream)
        R_av.append([res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"] for j in range(T)])
    np.testing.assert_allclose(R_av, R, atol=1e-9)

    fgt = [res[f"ExperienceForgetting/eval_phase/test_stream/Task000/Exp{j:03d}"] for j in range(T - 1)]
    assert fgt == pytest.approx([R[j][j] - R[T - 1][j] for j in range(T - 1)], abs=1e-9)
    assert all(max(R[l][j] for l in range(j, T - 1)) == R[j][j] for j in range(T - 1))  # the stated condition
    assert sum(fgt) / len(fgt) == pytest.approx(forgetting(R), abs=1e-9)
    assert sum(fgt) / len(fgt) == pytest.approx(-backward_transfer(R), abs=1e-9)
    assert ours["metrics"]["forgetting"] == pytest.approx(forgetting(R))
