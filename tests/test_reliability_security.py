"""Security checks over the code base: safe checkpoint loading, safe YAML, sanitized run names."""
import os
import re

from conftest import REPO

CODE_DIRS = ("cl", "scenarios", "strategies", "benchmarks")


def python_files():
    for d in CODE_DIRS:
        for root, _, files in os.walk(os.path.join(REPO, d)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(root, f)


def calls(pattern):
    """(file, line, call text) for each call matching ``pattern`` (parenthesised span, multi-line)."""
    out = []
    for path in python_files():
        src = open(path).read()
        for m in re.finditer(pattern, src):
            depth, i = 0, m.end() - 1
            while i < len(src):
                depth += src[i] == "("
                depth -= src[i] == ")"
                if depth == 0:
                    break
                i += 1
            out.append((os.path.relpath(path, REPO), src.count("\n", 0, m.start()) + 1, src[m.start():i + 1]))
    return out


def test_every_torch_load_is_weights_only():
    found = calls(r"torch\.load\(")
    assert found, "expected at least cl.io.torch_load"
    bad = [(f, n) for f, n, text in found if "weights_only=True" not in text]
    assert not bad, f"torch.load without weights_only=True at {bad}"


def test_yaml_is_parsed_safely():
    bad = [(f, n) for f, n, text in calls(r"\byaml\.(load|unsafe_load|full_load)\(")]
    assert not bad, f"unsafe YAML loading at {bad}"


def test_run_names_are_sanitized():
    from cl.rundir import sanitize_name
    for name in ("../../etc/passwd", "/abs/path", "a/../../b", "..", "~root", "x\x00y"):
        clean = sanitize_name(name)
        assert "/" not in clean and ".." not in clean and "\x00" not in clean and clean


def test_no_unrestricted_pickle_loader():
    """Pickles are read only through a restricted Unpickler subclass or torch's weights-only loader."""
    bad = [(f, n) for f, n, text in calls(r"\bpickle\.(load|loads)\(") + calls(r"\bUnpickler\(")]
    bad += [(f, n) for f, n, text in calls(r"\bnp\.load\(") if "allow_pickle=True" in text]
    assert not bad, f"unrestricted unpickling at {bad}"


class _Crafted:
    """Loading this pickle without restrictions would create ``flag`` (stands for any code)."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def _cifar10(root, test_batch):
    import pickle

    import numpy as np
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with open(os.path.join(folder, f"data_batch_{i}"), "wb") as f:
            pickle.dump({b"batch_label": b"training batch", b"labels": [i % 10, (i + 1) % 10],
                         b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"filenames": [b"a", b"b"]}, f,
                        protocol=4)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump(test_batch, f, protocol=4)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{k}".encode() for k in range(10)], b"num_vis": 3072}, f, protocol=4)


def test_crafted_cifar_pickle_runs_no_code(tmp_path):
    """The CIFAR loader used to execute a crafted dataset file (seen: a file was created by it)."""
    import pytest

    from cl.errors import DataError
    from scenarios.datasets import cifar10
    flag = tmp_path / "created-by-the-pickle"
    _cifar10(str(tmp_path), {b"data": _Crafted(str(flag)), b"labels": [0]})
    with pytest.raises(DataError, match="global 'io.open' is not allowed") as e:
        cifar10(str(tmp_path))
    assert "test_batch" in str(e.value)
    assert not flag.exists()


def test_official_cifar_layout_still_loads(tmp_path):
    """Dicts, lists, bytes and numpy uint8 arrays (what the official files hold) pass the restriction."""
    import numpy as np

    from scenarios.datasets import cifar10
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    _cifar10(str(tmp_path), {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 7], b"data": data,
                             b"filenames": [b"x.png", b"y.png"]})
    train, test, info = cifar10(str(tmp_path))
    assert len(train) == 10 and test.y.tolist() == [3, 7]
    assert test.x.shape == (2, 3, 32, 32) and test.x.flatten().tolist() == data.flatten().tolist()
    assert info["class_names"][:2] == ["c0", "c1"]
