"""Domain streams (permuted, rotated, dataset per domain), power-law recurrence, Avalanche adapter."""
import os

import numpy as np
import pytest
import torch

from cl.errors import ConfigError, DataError
from scenarios.power_law import power_law_schedule
from test_scenarios_splits import build, run_tiny


# ---------------------------------------------------------------------------- permuted / rotated
def test_permuted_domains_are_fixed_pixel_permutations():
    from scenarios.domain_stream import permutations
    s = build("scenario.name=permuted", "scenario.dataset=digits", "scenario.n_experiences=3",
              "scenario.first_identity=true")
    e0, e1, e2 = s.experiences
    perms = permutations(3, 64, 0, first_identity=True)
    flat0, flat1 = e0.test.x.flatten(1), e1.test.x.flatten(1)
    assert torch.equal(flat1, flat0[:, perms[1]])                    # one permutation for every image
    assert not torch.equal(flat0, flat1) and torch.equal(e0.test.y, e2.test.y)
    assert s.num_classes == 10 and all(e.classes == list(range(10)) for e in s.experiences)
    other = build("scenario.name=permuted", "scenario.dataset=digits", "scenario.n_experiences=3", seed=1)
    assert not torch.equal(other.experiences[1].test.x, e1.test.x)  # seeded


def test_rotated_domains_angles():
    s = build("scenario.name=rotated", "scenario.dataset=digits", "scenario.n_experiences=3")
    assert s.domains == ["rot0", "rot60", "rot120"]
    x0, x1 = s.experiences[0].test.x, s.experiences[1].test.x
    assert not torch.allclose(x0, x1)
    s2 = build("scenario.name=rotated", "scenario.dataset=digits", "scenario.n_experiences=2", "scenario.angles=[0,180]")
    assert torch.allclose(s2.experiences[1].test.x, s2.experiences[0].test.x.flip(-1).flip(-2), atol=1e-5)
    with pytest.raises(ConfigError, match="angles"):
        build("scenario.name=rotated", "scenario.dataset=digits", "scenario.n_experiences=3", "scenario.angles=[0,90]")


def test_permuted_runs(tmp_path):
    res = run_tiny(tmp_path, "scenario.name=permuted", "scenario.dataset=digits", "scenario.n_experiences=2")
    assert len(res["accuracy_matrix"]) == 2 and res["domains"] == ["perm0", "perm1"]


def test_rotated_online_runs(tmp_path):
    res = run_tiny(tmp_path, "strategy.name=source", "scenario.name=rotated", "scenario.dataset=digits", "scenario.n_experiences=2",
                   "scenario.protocol=online")
    assert res["protocol"] == "online" and list(res["per_domain_error"]) == ["rot0", "rot90"]


# ---------------------------------------------------------------------------- dataset per domain
def write_domains(root, domains=("clipart", "real"), classes=("ant", "bee", "cat"), per_class=4, lists=False):
    from PIL import Image
    lines = {d: [] for d in domains}
    for k, d in enumerate(domains):
        for c_i, c in enumerate(classes):
            folder = os.path.join(root, d, c)
            os.makedirs(folder)
            for i in range(per_class):
                size = (20 + i, 16 + 2 * i)                     # DomainNet images differ in size
                Image.fromarray(np.full((size[1], size[0], 3), 50 * k + c_i, np.uint8)).save(
                    os.path.join(folder, f"{i}.png"))
                lines[d].append(f"{d}/{c}/{i}.png {c_i}")
    if lists:
        for d in domains:
            with open(os.path.join(root, f"{d}_list.txt"), "w") as f:
                f.write("\n".join(lines[d]) + "\n")


def test_domain_folders_layouts(tmp_path):
    write_domains(str(tmp_path), lists=True)
    folder = build("scenario.name=domain_folders", f"scenario.root={tmp_path}", "scenario.image_size=8",
                   "scenario.test_fraction=0.25")
    assert folder.domains == ["clipart", "real"] and folder.num_classes == 3 and folder.input_shape == (3, 8, 8)
    e1 = folder.experiences[1]
    assert len(e1.train) == 9 and len(e1.test) == 3
    assert torch.equal(e1.train.x[:, 0, 0, 0], 50 + e1.train.y.to(torch.uint8))   # pixel value = 50*domain + class
    lst = build("scenario.name=domain_folders", f"scenario.root={tmp_path}", "scenario.layout=list",
                "scenario.domains=[real,clipart]", "scenario.image_size=8", "scenario.protocol=online",
                "scenario.source_domain=clipart")
    assert lst.domains == ["real"] and len(lst.source) == 12 and lst.experiences[0].train is None
    assert (lst.source.x[:, 0, 0, 0] == lst.source.y.to(torch.uint8)).all()
    single = build("scenario.name=domain_folders", f"scenario.root={tmp_path / 'real'}", "scenario.layout=single",
                   "scenario.image_size=8", "scenario.lazy=true")
    assert single.domains == ["real"] and single.num_classes == 3
    (b,) = list(single.experiences[0].test.batches(64))
    assert b.x.shape[1:] == (3, 8, 8)


def test_domain_folders_errors(tmp_path):
    with pytest.raises(DataError, match="looked in"):
        build("scenario.name=domain_folders", f"scenario.root={tmp_path / 'none'}")
    write_domains(str(tmp_path))
    with pytest.raises(DataError, match="different sizes"):
        build("scenario.name=domain_folders", f"scenario.root={tmp_path}", "scenario.image_size=0")
    with pytest.raises(ConfigError, match="source_domain"):
        build("scenario.name=domain_folders", f"scenario.root={tmp_path}", "scenario.protocol=online",
              "scenario.source_domain=sketch")


def test_domain_folders_runs(tmp_path):
    write_domains(str(tmp_path / "d"))
    res = run_tiny(tmp_path, "scenario.name=domain_folders", f"scenario.root={tmp_path / 'd'}", "scenario.image_size=8")
    assert len(res["accuracy_matrix"]) == 2


# ---------------------------------------------------------------------------- power law
def test_power_law_schedule_shape_and_recency():
    sched = power_law_schedule(4, 3, 0.5, seed=0)
    assert len(sched) == 16 and [k for k, new in sched if new] == [0, 1, 2, 3]
    assert all(k <= max(j for j, n in sched[:i + 1] if n) for i, (k, _) in enumerate(sched))  # only seen tasks
    assert power_law_schedule(4, 3, 0.5, seed=0) == sched
    # alpha -> large: always the most recent task; alpha = 0: uniform over the seen tasks
    assert all(k == 0 for k, _ in power_law_schedule(1, 5, 50.0)[1:])
    steep = power_law_schedule(5, 4, 50.0, seed=1)
    assert all(k == steep[i - 1][0] for i, (k, new) in enumerate(steep) if not new)


def test_power_law_recurrence_probability_decays_with_time_since_seen():
    """Empirical frequency of rehearsing a task vs. the time since it was last seen (hand formula)."""
    gaps = np.zeros(10)
    for seed in range(300):
        sched = power_law_schedule(2, 6, 1.0, seed=seed)
        last = {}
        for t, (k, new) in enumerate(sched):
            if not new and t > 2 and len(last) == 2:
                gaps[t - last[k]] += 1
            last[k] = t
    assert gaps[1] > gaps[2] > gaps[3]        # recent tasks recur more often


def test_power_law_runs(tmp_path):
    res = run_tiny(tmp_path, "scenario.name=power_law", "scenario.tasks=class_split", "scenario.dataset=digits",
                   "scenario.n_tasks=2", "scenario.rehearsals=1")
    assert len(res["accuracy_matrix"]) == 4 and res["domains"][0] == "task0"


# ---------------------------------------------------------------------------- Avalanche
def tiny_avalanche(seed=0):
    from avalanche.benchmarks import nc_benchmark
    from torch.utils.data import TensorDataset
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(10)
    x = torch.rand(40, 1, 4, 4, generator=g) + y.view(-1, 1, 1, 1)
    train, test = TensorDataset(x, y), TensorDataset(x[:20], y[:20])
    train.targets, test.targets = y.tolist(), y[:20].tolist()
    return nc_benchmark(train, test, n_experiences=2, task_labels=False, seed=seed)


def test_avalanche_benchmark_runs(tmp_path):
    pytest.importorskip("avalanche")
    s = build("scenario.name=avalanche", "scenario.benchmark=test_scenarios_domains:tiny_avalanche")
    assert len(s.experiences) == 2 and s.num_classes == 4
    for e in s.experiences:
        assert set(e.train.y.tolist()) == set(e.classes) and len(e.classes) == 2
    res = run_tiny(tmp_path, "scenario.name=avalanche", "scenario.benchmark=test_scenarios_domains:tiny_avalanche")
    assert len(res["accuracy_matrix"]) == 2


def test_avalanche_missing_gives_install_hint(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_avalanche(name, *a, **k):
        if name.startswith("avalanche"):
            raise ImportError("No module named 'avalanche'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_avalanche)
    with pytest.raises(ConfigError, match=r"cl-platform\[avalanche\]"):
        build("scenario.name=avalanche", "scenario.benchmark=SplitMNIST")
