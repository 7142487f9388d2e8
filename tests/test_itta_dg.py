"""ITTA (strategies/itta.py) and the leave-one-domain-out scenario (scenarios/domain_generalization.py):
DomainBed folder layouts written here, hand-computed pieces of ITTA, and the whole protocol through cl.runner."""
import pytest
import torch

from cl.config import load_config
from cl.data import TensorData
from cl.errors import ConfigError, DataError
from cl.registry import SCENARIOS, load_builtins
from cl.runner import build, run
from cl.strategy import StreamInfo
from scenarios.domain_generalization import PRESETS, LeaveOneDomainOutConfig, leave_one_domain_out
from strategies.itta import ITTA, ITTAConfig, ElementwiseStack, mixstyle, standardized_gap

load_builtins()


def write_domains(root, domains, classes, per_class=2, size=10):
    """ROOT/<domain>/<class>/<i>.png; pixel (0, 0) = (domain index, class index, image index) * 10."""
    from PIL import Image
    for d, dom in enumerate(domains):
        for c, cls in enumerate(classes):
            folder = root / dom / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = Image.new("RGB", (size, size), (10 * d, 3 * c, 10 * i))
                img.save(folder / f"{i}.png")
    return str(root)


def cfg(**kw):
    return LeaveOneDomainOutConfig(**{"image_size": 8, **kw})


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_folder_presets_hold_out_one_domain(tmp_path, preset):
    domains, n_classes = PRESETS[preset]
    classes = [f"c{k:02d}" for k in range(n_classes)]
    root = write_domains(tmp_path, domains, classes, per_class=1 if n_classes > 10 else 2)
    per = 1 if n_classes > 10 else 2
    sc = leave_one_domain_out(cfg(root=root, preset=preset, test_domain=domains[2]))
    assert sc.protocol == "online" and len(sc.experiences) == 1 and sc.num_classes == n_classes
    test = sc.experiences[0].test
    assert sc.experiences[0].domain == domains[2] and len(test) == n_classes * per
    assert (test.x[:, 0, 0, 0] == 20).all()                                  # red = 10 * domain index 2
    assert torch.equal(test.y, torch.arange(n_classes).repeat_interleave(per))
    assert torch.equal(test.x[:, 1, 0, 0].long(), 3 * test.y)               # labels follow the class folders
    src = sc.source
    assert len(src) == 3 * n_classes * per and sorted(src.g.unique().tolist()) == [0, 1, 2]
    assert torch.equal(src.x[:, 0, 0, 0][src.g == 2], torch.full((n_classes * per,), 30, dtype=torch.uint8))
    assert sc.class_names == classes and tuple(sc.input_shape) == (3, 8, 8)
    assert "test=" + domains[2] in sc.name


def test_folder_errors_say_what_to_fix(tmp_path):
    domains, _ = PRESETS["pacs"]
    root = write_domains(tmp_path / "a", domains[:3], [f"c{k}" for k in range(7)], per_class=1)
    with pytest.raises(DataError, match="sketch"):                           # a missing domain folder
        leave_one_domain_out(cfg(root=root, preset="pacs", test_domain="photo"))
    root = write_domains(tmp_path / "b", domains, ["dog", "cat"], per_class=1)
    with pytest.raises(DataError, match="7 classes"):                       # wrong folder: class count
        leave_one_domain_out(cfg(root=root, preset="pacs", test_domain="photo"))
    root = write_domains(tmp_path / "c", ["x", "y"], ["dog", "cat"], per_class=1)
    with pytest.raises(ConfigError, match="required"):
        leave_one_domain_out(cfg(root=root))
    with pytest.raises(ConfigError, match="not one of the domains"):
        leave_one_domain_out(cfg(root=root, test_domain="z"))
    sc = leave_one_domain_out(cfg(root=root, test_domain="-1"))             # an index counts too
    assert sc.experiences[0].domain == "y" and (sc.source.g == 0).all()
    with pytest.raises(DataError, match="not found"):
        leave_one_domain_out(cfg(root=str(tmp_path / "nowhere"), test_domain="x"))


def test_rotated_domains_are_disjoint_rotations():
    from scenarios.datasets import load_dataset
    from scenarios.domain_stream import rotate
    args = {"num_classes": 3, "n_train": 20, "n_test": 2}
    sc = leave_one_domain_out(LeaveOneDomainOutConfig(domains_from="rotated", dataset="synthetic", dataset_args=args,
                                                      angles=[0, 30, 60], n_per_domain=20, test_domain="rot60"))
    train, _, _ = load_dataset("synthetic", seed=0, **args)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    held = perm[40:60].sort().values                                          # the third slice
    assert torch.equal(sc.experiences[0].test.x, rotate(train.subset(held), 60).x)
    assert torch.equal(sc.source.x[sc.source.g == 1], rotate(train.subset(perm[20:40].sort().values), 30).x)
    with pytest.raises(ConfigError, match="n_per_domain"):
        leave_one_domain_out(LeaveOneDomainOutConfig(domains_from="rotated", dataset="synthetic", dataset_args=args,
                                                     n_per_domain=50, test_domain="0"))


# ---------------------------------------------------------------------------- ITTA pieces
def test_standardized_gradient_gap_hand_computed():
    # s([1,2,3]) = [-1, 0, 1], s([3,2,1]) = [1, 0, -1]: mean of (-2, 0, 2)^2 = 8/3
    gap = standardized_gap([torch.tensor([1.0, 2.0]), torch.tensor([3.0])], [torch.tensor([3.0, 2.0, 1.0])])
    assert gap.item() == pytest.approx(8 / 3, abs=1e-6)


def test_elementwise_stack_identity_then_hand_value():
    st = ElementwiseStack((3,), depth=2)
    x = torch.tensor([[-1.0, 0.5, 2.0]])
    assert torch.equal(st(x), torch.tensor([[0.0, 0.5, 2.0]]))               # ReLU between the layers only
    with torch.no_grad():
        st.weight[0].fill_(2.0), st.bias[0].fill_(-1.0), st.weight[1].fill_(3.0), st.bias[1].fill_(1.0)
    assert torch.allclose(st(x), torch.tensor([[1.0, 1.0, 10.0]]))           # 3 * relu(2x - 1) + 1


def test_mixstyle_mixes_statistics_and_is_identity_on_one_sample():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(mixstyle(x, 0.1, 1e-6), x, atol=1e-4)
    x = torch.stack([torch.full((2, 3, 3), 1.0) + torch.randn(2, 3, 3) * 0.1,
                     torch.full((2, 3, 3), 5.0) + torch.randn(2, 3, 3) * 2.0])
    y = mixstyle(x, 0.1, 1e-6)
    lo, hi = x.mean((2, 3)).min(0).values, x.mean((2, 3)).max(0).values
    m = y.mean((2, 3))
    assert ((m >= lo - 1e-4) & (m <= hi + 1e-4)).all()                          # convex mix of the two means


def small_cnn():
    from cl.models.small import small_cnn as build
    return build(num_classes=3, input_shape=(3, 8, 8), width=4, depth=2)


def test_itta_trains_model_and_consistency_then_only_the_test_blocks():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    y = torch.arange(48) % 3
    source = TensorData((torch.rand(48, 3, 8, 8, generator=g) * 255).to(torch.uint8), y, torch.arange(48) // 16)
    model = small_cnn()
    s = ITTA(model, ITTAConfig(train_steps=3, train_batch_size=8, ada_lr=1.0, batch_size=16),
             stream=StreamInfo(num_classes=3, input_shape=(3, 8, 8), protocol="online"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s.setup(source=source)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "weight" in k)
    assert any(not torch.equal(p, torch.ones_like(p)) for p in s.adaparams.weight)   # gradient alignment moved A
    x = source.x[:16].float() / 255
    s._mapping_on = False
    plain = model(x)
    s._mapping_on = True
    assert torch.allclose(s.predict(x), plain, atol=1e-6)                  # test blocks start as the identity
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    ada = [p.clone() for p in s.adaparams.parameters()]
    s.adapt(x)
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(ada, s.adaparams.parameters()))
    assert any(not torch.equal(p, torch.ones_like(p)) for p in s.mapping[0].weight)
    s.reset()
    assert all(torch.equal(p, torch.ones_like(p)) for p in s.mapping[0].weight)


def test_itta_refuses_models_without_stages():
    from cl.models.small import mlp as build
    mlp = build(num_classes=3, input_shape=(3, 8, 8), hidden=8)
    with pytest.raises(ConfigError, match="layer1"):
        ITTA(mlp, ITTAConfig(), stream=StreamInfo(num_classes=3, input_shape=(3, 8, 8))).setup(
            source=TensorData(torch.zeros(3, 3, 8, 8), torch.arange(3)))


def test_leave_one_domain_out_through_the_runner(tmp_path):
    """ERM and ITTA on rotated synthetic domains, held-out rot60: both complete, errors in results.json."""
    base = ["scenario.name=leave_one_domain_out", "scenario.domains_from=rotated", "scenario.dataset=synthetic",
            "scenario.dataset_args={num_classes: 3, n_train: 30, n_test: 2}", "scenario.angles=[0,30,60]",
            "scenario.n_per_domain=30", "scenario.test_domain=rot60", "model.name=small_cnn", "model.args.width=4",
            "strategy.name=itta", "strategy.train_steps=20", "strategy.train_batch_size=10", "strategy.lr=1e-2",
            "strategy.batch_size=10", "logging.tensorboard=false", "logging.plots=false", "logging.progress=false",
            "logging.console=false", "device=cpu", f"output_dir={tmp_path}"]
    out = {}
    for obj in ("erm", "itta"):
        res = run(load_config(None, base + [f"name={obj}", f"strategy.objective={obj}"]), str(tmp_path / obj))
        assert res["status"] == "complete" and res["protocol"] == "online"
        out[obj] = res
    assert "itta_train_log" in str(out["itta"]) and "itta_train_log" not in str(out["erm"])
