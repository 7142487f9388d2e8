"""Label shift in corruption streams (``scenario.label_shift``): known class counts per experience."""
import numpy as np
import pytest
import torch

from cl.errors import ConfigError
from scenarios.corruption_stream import class_counts, label_shift_keep
from test_scenarios_corruption import cifar_c, write_cifar10c

N = 200          # images per severity in the fake CIFAR-10-C files: 20 per class


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    import test_scenarios_corruption as T
    monkeypatch.setattr(T, "PER_SEV", N)
    write_cifar10c(str(tmp_path))
    return str(tmp_path)


def counts(exp):
    return torch.bincount(exp.test.y, minlength=10).tolist()


def test_long_tailed_counts_follow_the_imbalance_ratio(folder):
    sc = cifar_c(folder, "scenario.label_shift=long_tailed", "scenario.imbalance_ratio=10")
    # n_k = floor(20 * 10 ** (-k / 9)): 20, 15, 11, 9, 7, 5, 4, 3, 2, 2
    expected = [int(20 * 10 ** (-k / 9)) for k in range(10)]
    assert expected == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]
    for exp in sc.experiences:
        assert counts(exp) == expected
        idx = exp.test.x[:, 2, 0, 0].long()              # the image index is encoded in the pixels
        assert torch.equal(exp.test.y, idx % 10)         # labels still follow their images
        assert len(set(idx.tolist())) == len(idx)        # no image twice


def test_long_tailed_per_domain_order_changes_the_head_class(folder):
    sc = cifar_c(folder, "scenario.label_shift=long_tailed", "scenario.imbalance_ratio=10",
                 "scenario.label_order=per_domain")
    per = [counts(e) for e in sc.experiences]
    assert all(sorted(c, reverse=True) == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2] for c in per)
    assert len({tuple(c) for c in per}) > 1              # not the same prior in every domain


def test_uniform_and_dirichlet_counts(folder):
    sc = cifar_c(folder, "scenario.label_shift=uniform", "scenario.n_examples=50")
    assert all(len(e.test) == 50 for e in sc.experiences)
    sc = cifar_c(folder, "scenario.label_shift=uniform")
    assert all(counts(e) == [20] * 10 for e in sc.experiences)
    sc = cifar_c(folder, "scenario.label_shift=dirichlet", "scenario.label_concentration=0.5", seed=3)
    for d, exp in enumerate(sc.experiences):
        p = np.random.default_rng(3 + 7919 * (d + 1)).dirichlet(np.full(10, 0.5))
        assert counts(exp) == [int(20 * p[k] / p.max()) for k in range(10)]
        assert max(counts(exp)) == 20


def test_mixed_domains_subsample_each_domain(folder):
    sc = cifar_c(folder, "scenario.setting=mixed_domains", "scenario.label_shift=long_tailed",
                 "scenario.imbalance_ratio=10")
    data = sc.experiences[0].test
    for d in range(3):
        assert torch.bincount(data.y[data.g == d], minlength=10).tolist() == [20, 15, 11, 9, 7, 5, 4, 3, 2, 2]


def test_label_shift_helpers_by_hand():
    class Cfg:
        label_shift, imbalance_ratio, label_order, label_concentration = "long_tailed", 100.0, "fixed", 1.0
    assert class_counts([50, 60, 70], Cfg, 0) == [50, 5, 1]      # 50 * 100 ** (-k / 2), at least 1
    y = torch.tensor([2, 0, 2, 1, 0, 2, 0])
    assert label_shift_keep(y, [2, 0, 1]).tolist() == [True, True, False, False, True, False, False]


@pytest.mark.parametrize("over,match", [("scenario.label_shift=zipf", "label_shift"),
                                        ("scenario.imbalance_ratio=0.5", "imbalance_ratio"),
                                        ("scenario.label_concentration=0", "label_concentration"),
                                        ("scenario.label_order=random", "label_order")])
def test_bad_label_shift_options(folder, over, match):
    with pytest.raises(ConfigError, match=match):
        cifar_c(folder, "scenario.label_shift=long_tailed", over)


def test_online_results_report_per_class_and_balanced_error(folder, tmp_path):
    """A model that always predicts class 0 on a long-tailed stream: class 0 is always right, the
    others always wrong, so the balanced error is 0.9 while the plain error is 1 - 20/78."""
    from cl import io
    from cl.config import ModelConfig
    from cl.models import build_model
    from test_scenarios_splits import run_tiny
    net = build_model(ModelConfig(name="mlp", args={"hidden": 16}), 10, (3, 32, 32))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        list(net.parameters())[-1][0] = 1.0           # the last bias: class 0 wins everywhere
    ckpt = tmp_path / "const.pt"
    io.torch_save(net.state_dict(), ckpt)
    res = run_tiny(tmp_path, "scenario.name=corruption_stream", "scenario.data_format=cifar10_c",
                   f"scenario.corrupted_root={folder}", "scenario.corruptions=[gaussian_noise,brightness]",
                   "scenario.label_shift=long_tailed", "scenario.imbalance_ratio=10", "strategy.name=source",
                   f"model.checkpoint={ckpt}")
    assert res["per_class_error"] == {k: (0.0 if k == 0 else 1.0) for k in range(10)}
    assert res["metrics"]["balanced_error"] == pytest.approx(0.9)
    assert res["metrics"]["mean_error"] == pytest.approx(1 - 20 / 78)


def test_short_stream_still_follows_the_long_tailed_prior(folder):
    # 20 per class, ratio 10: kept counts 20, 15, 11, 9, 7, 5, 4, 3, 2, 2 (88); 40 of them drawn at random
    # keep the skew (the first 40 shuffled images would be ~4 per class: no shift at all)
    sc = cifar_c(folder, "scenario.label_shift=long_tailed", "scenario.imbalance_ratio=10", "scenario.n_examples=40")
    for exp in sc.experiences:
        c = counts(exp)
        assert sum(c) == 40 and c[0] + c[1] + c[2] >= 20 and c[8] + c[9] <= 4, c
