"""Corruption streams for continual TTA: official file formats, settings, orderings, runner."""
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cl.errors import ConfigError, DataError
from scenarios.corruption_stream import (GRADUAL, STANDARD_ORDER, dirichlet_order, severity_schedule,
                                         stream_order)
from test_scenarios_splits import build, run_tiny

C3 = "[gaussian_noise,brightness,contrast]"
PER_SEV = 30   # images per severity in the fake CIFAR-10-C files


def write_cifar10c(folder, corruptions=("gaussian_noise", "brightness", "contrast")):
    """Official layout: <corruption>.npy = 5 severities x N images (NHWC uint8), labels.npy (5 x N)."""
    os.makedirs(folder, exist_ok=True)
    labels = np.tile(np.arange(PER_SEV) % 10, 5).astype(np.uint8)
    np.save(os.path.join(folder, "labels.npy"), labels)
    arrays = {}
    for k, c in enumerate(corruptions):
        a = np.zeros((5 * PER_SEV, 32, 32, 3), dtype=np.uint8)
        for s in range(5):   # encode (corruption, severity, image index) in the pixels
            a[s * PER_SEV:(s + 1) * PER_SEV, 0, 0, 0] = k
            a[s * PER_SEV:(s + 1) * PER_SEV, 0, 0, 1] = s + 1
            a[s * PER_SEV:(s + 1) * PER_SEV, 0, 0, 2] = np.arange(PER_SEV)
        np.save(os.path.join(folder, f"{c}.npy"), a)
        arrays[c] = a
    return arrays


def cifar_c(folder, *over, seed=0):
    return build("scenario.name=corruption_stream", "scenario.data_format=cifar10_c",
                 f"scenario.corrupted_root={folder}", f"scenario.corruptions={C3}", *over, seed=seed)


# ---------------------------------------------------------------------------- schedules
@given(st.integers(1, 15))
def test_gradual_schedule_lengths(n):
    cs = STANDARD_ORDER[:n]
    bench = severity_schedule("gradual", cs, 5)
    cotta = severity_schedule("gradual_cotta", cs, 5)
    assert len(bench) == 9 * n and [s for _, s in bench[:9]] == GRADUAL
    assert len(cotta) == 5 + 9 * (n - 1) and [s for _, s in cotta[:5]] == [5, 4, 3, 2, 1]
    assert [s for _, s in cotta[5:14]] == (GRADUAL if n > 1 else [])
    assert severity_schedule("continual", cs, 3) == [(c, 3) for c in cs]


# ---------------------------------------------------------------------------- orderings (properties)
@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(20, 60), st.floats(0.01, 10.0), st.integers(0, 10_000))
def test_dirichlet_order_is_a_permutation(num_classes, per_class, delta, seed):
    y = np.repeat(np.arange(num_classes), per_class)
    order = dirichlet_order(y, delta, num_classes, np.random.default_rng(seed), min_chunk=1)
    assert torch.equal(order.sort().values, torch.arange(len(y)))
    again = dirichlet_order(y, delta, num_classes, np.random.default_rng(seed), min_chunk=1)
    assert torch.equal(order, again)                     # reproducible from the seed


def test_small_delta_gives_long_label_runs():
    y = np.repeat(np.arange(10), 100)
    runs = {}
    for delta in (0.01, 100.0):
        order = dirichlet_order(y, delta, 10, np.random.default_rng(0)).numpy()
        runs[delta] = int((np.diff(y[order]) != 0).sum())
    assert runs[0.01] < 40 < runs[100.0]                 # strongly correlated vs. close to class-balanced chunks


class Cfg:
    def __init__(self, **kw):
        self.shuffle, self.n_examples, self.delta_dirichlet, self.dirichlet_min_chunk = True, -1, 0.0, 1
        self.__dict__.update(kw)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=80), st.booleans(), st.integers(0, 1000))
def test_correlated_stream_keeps_every_sample_once(labels, shuffle, seed):
    y = torch.tensor(labels)
    order = stream_order(y, Cfg(shuffle=shuffle), True, seed, 5)
    assert torch.equal(order.sort().values, torch.arange(len(y)))
    assert torch.all(y[order][1:] >= y[order][:-1])       # sorted by label


# ---------------------------------------------------------------------------- CIFAR-10-C files
def test_cifar10c_continual_reads_the_right_severity(tmp_path):
    arrays = write_cifar10c(str(tmp_path))
    s = cifar_c(tmp_path, "scenario.severity=3")
    assert s.protocol == "online" and s.domains == ["gaussian_noise/3", "brightness/3", "contrast/3"]
    assert s.num_classes == 10 and s.input_shape == (3, 32, 32) and not s.reset_each_shift
    for k, e in enumerate(s.experiences):
        assert e.train is None and len(e.test) == PER_SEV
        px = e.test.x[:, :, 0, 0]
        assert (px[:, 0] == k).all() and (px[:, 1] == 3).all()
        idx = px[:, 2].long()                                # the original image index
        assert torch.equal(e.test.y, idx % 10)               # labels follow their images
        assert not torch.equal(idx, torch.arange(PER_SEV))   # shuffled (benchmark default)
        np.testing.assert_array_equal(e.test.x[0].permute(1, 2, 0).numpy(), arrays[e.domain.split("/")[0]][2 * PER_SEV + int(idx[0])])
    assert torch.equal(s.experiences[0].test.y, s.experiences[1].test.y)   # same permutation in every domain


def test_cifar10c_reproducible_from_seed(tmp_path):
    write_cifar10c(str(tmp_path))
    a, b, c = cifar_c(tmp_path, seed=1), cifar_c(tmp_path, seed=1), cifar_c(tmp_path, seed=2)
    assert torch.equal(a.experiences[2].test.x, b.experiences[2].test.x)
    assert not torch.equal(a.experiences[2].test.x, c.experiences[2].test.x)
    ordered = cifar_c(tmp_path, "scenario.shuffle=false", "scenario.n_examples=7")
    assert ordered.experiences[0].test.x[:, 2, 0, 0].tolist() == list(range(7))


def test_cifar10c_settings(tmp_path):
    write_cifar10c(str(tmp_path))
    grad = cifar_c(tmp_path, "scenario.setting=gradual")
    assert len(grad.experiences) == 27 and grad.domains[:3] == ["gaussian_noise/1", "gaussian_noise/2", "gaussian_noise/3"]
    assert (grad.experiences[4].test.x[:, 1, 0, 0] == 5).all()
    assert cifar_c(tmp_path, "scenario.setting=reset_each_shift").reset_each_shift
    mixed = cifar_c(tmp_path, "scenario.setting=mixed_domains")
    (e,) = mixed.experiences
    assert len(e.test) == 3 * PER_SEV and mixed.domains == ["gaussian_noise/5", "brightness/5", "contrast/5"]
    assert torch.equal(e.test.g, e.test.x[:, 0, 0, 0].long())          # g = the domain of each sample
    assert torch.bincount(e.test.g).tolist() == [PER_SEV] * 3
    assert len(set(e.test.g[:10].tolist())) > 1                          # domains are interleaved
    corr = cifar_c(tmp_path, "scenario.setting=mixed_domains_correlated")
    y = corr.experiences[0].test.y
    assert torch.all(y[1:] >= y[:-1])
    dirich = cifar_c(tmp_path, "scenario.setting=correlated", "scenario.delta_dirichlet=0.1",
                     "scenario.dirichlet_min_chunk=1")
    ids = dirich.experiences[0].test.x[:, 2, 0, 0].long()
    assert sorted(ids.tolist()) == list(range(PER_SEV))


def test_cifar10c_with_source(tmp_path):
    write_cifar10c(str(tmp_path / "c"))
    np.savez(tmp_path / "clean.npz", x_train=np.zeros((12, 32, 32, 3), np.uint8), y_train=np.arange(12) % 10,
             x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.arange(2))
    s = cifar_c(tmp_path / "c", "scenario.with_source=true", "scenario.dataset=npz",
                f"scenario.root={tmp_path / 'clean.npz'}", "scenario.source_samples=5")
    assert len(s.source) == 5 and s.source.x.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("over,match", [
    (["scenario.severity=6"], "1..5"),
    (["scenario.severity=0"], "1..5"),
    (["scenario.corruptions=[gaussian_nois]"], "did you mean 'gaussian_noise'"),
    (["scenario.setting=gradul"], "Unknown scenario.setting"),
    (["scenario.data_format=cifar10c"], "data_format"),
])
def test_bad_streams_fail_before_reading_data(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        cifar_c(tmp_path / "does-not-exist", *over)


def test_missing_cifar10c_names_folder(tmp_path):
    with pytest.raises(DataError, match="CIFAR10_C.*zenodo|zenodo") as e:
        cifar_c(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)


# ---------------------------------------------------------------------------- ImageNet-C folders
def write_imagenetc(root, corruptions=("gaussian_noise", "fog"), wnids=("n01", "n02", "n03"), per_class=4):
    from PIL import Image
    for k, c in enumerate(corruptions):
        for s in range(1, 6):
            for w in wnids:
                d = os.path.join(root, c, str(s), w)
                os.makedirs(d)
                for i in range(per_class):
                    Image.fromarray(np.full((20, 24, 3), 10 * k + s, np.uint8)).save(os.path.join(d, f"img{i}.png"))


def test_imagenetc_subsets_and_stream(tmp_path):
    write_imagenetc(str(tmp_path))
    base = ["scenario.name=corruption_stream", "scenario.data_format=imagenet_c", f"scenario.corrupted_root={tmp_path}",
            "scenario.corruptions=[gaussian_noise,fog]", "scenario.severity=2"]
    full = build(*base)
    assert full.num_classes == 3 and [len(e.test) for e in full.experiences] == [12, 12]
    sub = build(*base, "scenario.imagenet_per_class=2", "scenario.crop=16")
    e = sub.experiences[1]
    assert len(e.test) == 6 and sorted(e.test.y.tolist()) == [0, 0, 1, 1, 2, 2] and sub.input_shape == (3, 16, 16)
    assert all("img0" in p or "img1" in p for p in e.test.paths)
    (batch,) = list(e.test.batches(8))
    assert torch.allclose(batch.x, torch.full_like(batch.x, 12 / 255))      # fog (k=1), severity 2
    lst = tmp_path / "ids.txt"
    lst.write_text("n02/img3.png\nn01/img0.png\n")
    chosen = build(*base, f"scenario.imagenet_list={lst}", "scenario.shuffle=false")
    assert chosen.experiences[0].test.y.tolist() == [1, 0]
    mixed = build(*base, "scenario.setting=mixed_domains")
    assert torch.bincount(mixed.experiences[0].test.g).tolist() == [12, 12]


# ---------------------------------------------------------------------------- generated + runner
def tiny_clean(tmp_path, n=20):
    rng = np.random.default_rng(0)
    path = tmp_path / "clean.npz"
    np.savez(path, x_train=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y_train=np.arange(n) % 4,
             x_test=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y_test=np.arange(n) % 4)
    return path


def test_generated_stream_applies_corrupt(tmp_path):
    from scenarios.corruptions import corrupt
    path = tiny_clean(tmp_path)
    s = build("scenario.name=corruption_stream", "scenario.dataset=npz", f"scenario.root={path}",
              "scenario.corruptions=[gaussian_noise,contrast]", "scenario.severity=4", "scenario.shuffle=false")
    clean = torch.from_numpy(np.load(path)["x_test"]).permute(0, 3, 1, 2)
    assert torch.equal(s.experiences[1].test.x, corrupt(clean, "contrast", 4, seed=0))
    again = build("scenario.name=corruption_stream", "scenario.dataset=npz", f"scenario.root={path}",
                  "scenario.corruptions=[gaussian_noise,contrast]", "scenario.severity=4", "scenario.shuffle=false")
    assert torch.equal(s.experiences[0].test.x, again.experiences[0].test.x)   # reproducible


@pytest.mark.parametrize("setting", ["continual", "gradual_cotta", "mixed_domains"])
def test_corruption_stream_runs_through_runner(tmp_path, setting):
    write_cifar10c(str(tmp_path / "c"))
    res = run_tiny(tmp_path, "strategy.name=source", "scenario.name=corruption_stream", "scenario.data_format=cifar10_c",
                   f"scenario.corrupted_root={tmp_path / 'c'}", f"scenario.corruptions={C3}",
                   f"scenario.setting={setting}", **{"strategy.batch_size": 8})
    assert res["status"] == "complete" and res["protocol"] == "online"
    n_dom = {"continual": 3, "gradual_cotta": 5 + 9 + 9, "mixed_domains": 3}[setting]
    assert len(res["per_domain_error"]) == n_dom
    assert all(0 <= v <= 1 for v in res["per_domain_error"].values())


# ---------------------------------------------------------------------------- experiment files
def test_cifar10c_continual_experiment_file(tmp_path):
    from cl.config import load_config
    from cl.runner import run
    from conftest import REPO, quick_overrides
    write_cifar10c(str(tmp_path / "c"))
    over = quick_overrides(tmp_path, **{"scenario.corrupted_root": str(tmp_path / "c"), "scenario.corruptions": C3,
                                        "strategy.batch_size": 16, "logging.tensorboard": False,
                                        "logging.plots": False, "device": "cpu", "threads": 1})
    cfg = load_config(os.path.join(REPO, "experiments", "cifar10c_continual.yaml"), over)
    res = run(cfg, str(tmp_path / "run"))
    assert res["strategy"] == "source" and list(res["per_domain_error"]) == ["gaussian_noise/5", "brightness/5",
                                                                              "contrast/5"]


def test_split_cifar10_experiment_file(tmp_path):
    from cl.config import load_config
    from cl.runner import build as build_run
    from conftest import REPO
    from test_scenarios_loaders import write_cifar10
    write_cifar10(str(tmp_path))
    cfg = load_config(os.path.join(REPO, "experiments", "split_cifar10.yaml"), [f"scenario.root={tmp_path}",
                                                                                 "device=cpu"])
    built = build_run(cfg)
    scenario, strategy = built.scenario, built.strategy
    assert len(scenario.experiences) == 5 and scenario.experiences[0].classes == [0, 1]
    assert strategy.cfg.epochs == 50 and scenario.experiences[0].train.transform is not None   # crop_flip


def test_generated_cache_matches_direct_corruption(tmp_path):
    path = tiny_clean(tmp_path)
    base = ["scenario.name=corruption_stream", "scenario.dataset=npz", f"scenario.root={path}",
            "scenario.corruptions=[gaussian_noise,impulse_noise]", "scenario.n_examples=9"]
    direct = build(*base, seed=3)
    cached = build(*base, f"scenario.cache_dir={tmp_path / 'cache'}", seed=3)
    assert len(os.listdir(tmp_path / "cache")) == 2
    again = build(*base, f"scenario.cache_dir={tmp_path / 'cache'}", seed=3)     # read back from the cache
    for a, b, c in zip(direct.experiences, cached.experiences, again.experiences):
        assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.x, c.test.x) and len(a.test) == 9


@pytest.fixture(scope="module")
def cifarc_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cifarc")
    write_cifar10c(str(d))
    return d


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["continual", "mixed_domains", "correlated"]))
def test_streams_reproducible_from_seed(cifarc_dir, seed, setting):
    a = cifar_c(cifarc_dir, f"scenario.setting={setting}", "scenario.delta_dirichlet=0.5",
                "scenario.dirichlet_min_chunk=1", seed=seed)
    b = cifar_c(cifarc_dir, f"scenario.setting={setting}", "scenario.delta_dirichlet=0.5",
                "scenario.dirichlet_min_chunk=1", seed=seed)
    for ea, eb in zip(a.experiences, b.experiences):
        assert torch.equal(ea.test.x, eb.test.x) and torch.equal(ea.test.y, eb.test.y)
    ids = a.experiences[0].test.x[:, :, 0, 0].long()
    keys = ids[:, 0] * 1000 + ids[:, 2]                     # (domain, image) pairs: each exactly once
    assert len(set(keys.tolist())) == len(keys) == len(a.experiences[0].test)
