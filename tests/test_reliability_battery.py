"""The bad-input battery, generated (not a hand list) from:

- the config schema: every field of RunConfig (and its logging/model sections) and of every
  registered strategy's and scenario's config, each given a value of the wrong type, out of range
  and of the wrong shape, derived from the field's declared type and default;
- the CLI: every verb of ``cl.cli.make_parser()``, each file or folder it takes given as missing,
  a folder / a file, empty, not UTF-8, binary junk, truncated, of the wrong structure, unreadable
  (or, for run folders, read-only / damaged / not ours), every numeric option out of range, an
  unknown option;
- the file formats we read: every on-disk dataset adapter's files and every checkpoint input
  (``model.checkpoint``, a run's ``checkpoints/last.pt``) empty, truncated, foreign and crafted
  to run code.

Every case must end with exit status 2, a message that starts with "error: " and is one
paragraph without a traceback, names what was wrong (the key, the value or the file), and leaves
every file that existed before byte-identical with nothing new created.

The full product is large: a fixed stratified sample of 40 cases runs with the test suite; with
``-m slow`` a larger one runs too (``CL_BATTERY_SAMPLE`` cases in all, default 150, seed
``CL_BATTERY_SEED``); ``CL_BATTERY_SAMPLE=all pytest -m "slow or not slow"`` runs every case. The
totals of the last full run are in docs/reliability.md.
"""
import builtins
import contextlib
import dataclasses
import gzip
import hashlib
import os
import pickle
import random
import shutil
import types
import typing

import numpy as np
import pytest
import torch
import yaml

from cl.cli import main, make_parser
from conftest import QUICKSTART

QUIET = ["logging.progress=false", "logging.console=false", "logging.tensorboard=false", "logging.plots=false"]
FAST = ["strategy.epochs=1", "scenario.train_fraction=0.3", "eval_initial=false"]


# ---------------------------------------------------------------------------- simulated permissions
@contextlib.contextmanager
def denied(path, write=True, read=False):
    """Make ``path`` (a file or a folder and everything under it) unwritable (and unreadable when
    ``read``) for this process, also as root: chmod when that binds, and the OS calls that would
    fail fail with EACCES otherwise (root ignores permission bits)."""
    import errno
    import tempfile  # noqa: F401  (tempfile.mkstemp goes through os.open)
    root = os.path.abspath(path)

    def under(p):
        try:
            p = os.path.abspath(os.fsdecode(p))
        except TypeError:
            return False
        return p == root or p.startswith(root + os.sep)

    def refuse(p):
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(p))

    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace", "rename", "unlink", "rmdir", "access")}
    real_open = builtins.open

    def os_open(p, flags, *a, **k):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if under(p) and ((write and writing) or (read and not writing)):
            refuse(p)
        return real["open"](p, flags, *a, **k)

    def py_open(p, mode="r", *a, **k):
        writing = any(c in mode for c in "wax+")
        if not isinstance(p, int) and under(p) and ((write and writing) or (read and not writing)):
            refuse(p)
        return real_open(p, mode, *a, **k)

    def guarded(name):
        def call(p, *a, **k):
            if write and (under(p) or (a and isinstance(a[0], (str, bytes, os.PathLike)) and under(a[0]))):
                refuse(p)
            return real[name](p, *a, **k)
        return call

    def access(p, mode, *a, **k):
        if under(p) and ((write and mode & os.W_OK) or (read and mode & os.R_OK)):
            return False
        return real["access"](p, mode, *a, **k)

    modes = {}
    for dirpath, dirs, files in os.walk(root) if os.path.isdir(root) else [(os.path.dirname(root), [], [root])]:
        for p in [dirpath] + [os.path.join(dirpath, f) for f in files]:
            if os.path.exists(p) and (p == root or under(p)):
                modes[p] = os.stat(p).st_mode
                os.chmod(p, modes[p] & ~(0o222 if write else 0) & ~(0o444 if read else 0) | (
                    0o100 if os.path.isdir(p) else 0))
    patches = [(os, "open", os_open), (builtins, "open", py_open), (os, "access", access)] + [
        (os, n, guarded(n)) for n in ("mkdir", "replace", "rename", "unlink", "rmdir")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
        for p, mode in sorted(modes.items(), reverse=True):
            os.chmod(p, mode)


# ---------------------------------------------------------------------------- file snapshots
def snapshot(root):
    """{relative path: sha256 (files) or 'dir'} of everything under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_refused(code, err, names, before, after, may_succeed=False):
    """Exit 2 with one clean paragraph naming one of ``names`` and no file changed; with
    ``may_succeed`` (a value the field may accept) exit 0 also passes, and a refusal need not
    name the value (it may fail later, e.g. a path that does not exist) but must still be clean."""
    if may_succeed and code == 0:
        return
    if may_succeed:
        names = None
    assert code == 2, f"exit {code}, stderr: {err[-1500:]}"
    assert err.startswith("error: "), err[-1500:]
    assert "Traceback" not in err and "\n\n" not in err.strip(), err[-1500:]
    assert len(err.strip().splitlines()) == 1, err[-1500:]              # one paragraph, on one line
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    if names:
        assert any(str(n).lower() in err.lower() for n in names), (names, err)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not changed, f"files changed or created: {sorted(changed)[:10]}"


# ---------------------------------------------------------------------------- the world a case runs in
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with what a user has: an experiment file, a completed run (with checkpoint and
    model.pt) in the output folder, and a checkpoint of another strategy's run."""
    root = tmp_path_factory.mktemp("world")
    out = root / "runs"
    args = ["run", QUICKSTART, f"output_dir={out}", "save_model=true", "scenario.n_experiences=2",
            "strategy.epochs=1", "scenario.train_fraction=0.3"] + QUIET
    assert main(args) == 0
    assert main(args[:1] + [QUICKSTART, f"output_dir={root / 'other'}", "strategy.name=er", "strategy.buffer_size=20",
                            "scenario.n_experiences=2", "strategy.epochs=1", "scenario.train_fraction=0.3"] + QUIET) == 0
    (run_dir,) = [os.path.join(out, "quickstart", d) for d in os.listdir(out / "quickstart")]
    (other,) = [os.path.join(root, "other", "quickstart", d) for d in os.listdir(root / "other" / "quickstart")]
    return {"root": str(root), "out": str(out), "run": run_dir, "other": other}


# ---------------------------------------------------------------------------- cases: the config schema
def _fields():
    """(section prefix, selector overrides, dataclass field) for every config field."""
    from cl.config import LoggingConfig, ModelConfig, RunConfig, StrategyConfig
    from cl.registry import SCENARIOS, STRATEGIES, load_builtins
    load_builtins()
    out = []
    for f in dataclasses.fields(RunConfig):
        if not dataclasses.is_dataclass(f.default_factory() if f.default_factory is not dataclasses.MISSING else 0):
            out.append(("", [], f))
    out += [("logging.", [], f) for f in dataclasses.fields(LoggingConfig)]
    out += [("model.", [], f) for f in dataclasses.fields(ModelConfig) if f.name != "name"]
    width = types.SimpleNamespace(name="hidden", type=int, default=128, default_factory=dataclasses.MISSING)
    out.append(("model.args.", [], width))      # the quickstart MLP's width (model.args is free-form)
    base = {f.name for f in dataclasses.fields(StrategyConfig)}
    for name in STRATEGIES.names():
        for f in dataclasses.fields(STRATEGIES.config_of(name)):
            if f.name != "name" and (name == "finetune" or f.name not in base):
                out.append(("strategy.", [f"strategy.name={name}"], f))
    for name in SCENARIOS.names():
        cls = SCENARIOS.config_of(name)
        for f in dataclasses.fields(cls) if cls else []:
            if f.name != "name":
                out.append(("scenario.", [f"scenario.name={name}"], f))
    return out


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _kind(t):
    """'int' | 'float' | 'bool' | 'str' | 'list' | 'dict' of a field type (Optional unwrapped)."""
    if typing.get_origin(t) is typing.Union:
        t = [a for a in typing.get_args(t) if a is not type(None)][0]
    origin = typing.get_origin(t) or t
    return {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict",
            typing.List: "list", typing.Dict: "dict"}.get(origin, "other")


UNKNOWN = "unknown value"   # a string the field may or may not accept (a choice, or free text like a name)


def bad_values(f):
    """[(kind of fault, override text)] for one field, derived from its type and default."""
    kind, default = _kind(f.type), _default(f)
    out = []
    if kind in ("int", "float"):
        low = -2 if isinstance(default, (int, float)) and default < 0 else -5
        out += [("wrong type", "abc"), ("out of range", str(low)), ("wrong shape", "[1,2]")]
        if kind == "float":
            out += [("out of range", "nan"), ("out of range", "inf")]
            if f.name.endswith(("fraction", "momentum", "ema_decay")):
                out.append(("out of range", "1.5"))
        else:
            out.append(("wrong type", "0.5"))
    elif kind == "bool":
        out += [("wrong type", "maybe"), ("wrong shape", "[1,2]")]
    elif kind == "str":
        out += [("wrong shape", "[1,2]"), ("wrong shape", "{a: 1}"), (UNKNOWN, "no_such_value_xyz")]
    elif kind == "list":
        out += [("wrong type", "abc"), ("wrong shape", "{a: 1}")]
        if default and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in default):
            out.append(("wrong type", "[x,y]"))
    elif kind == "dict":
        out += [("wrong type", "abc"), ("wrong shape", "[1,2]")]
    return out


def schema_cases():
    cases = []
    for prefix, select, f in _fields():
        key = prefix + f.name
        for fault, value in bad_values(f):
            sid = select[0].split("=")[1] + ":" if select else ""
            cases.append((f"schema/{sid}{key}={value} ({fault})", "schema",
                          {"select": select, "key": key, "value": value, "may_succeed": fault == UNKNOWN}))
    return cases


def run_schema_case(world, capsys, case):
    """The experiment is the quickstart for run/logging/model/strategy fields; a file naming only the
    scenario for scenario fields (each scenario has its own keys)."""
    root = world["root"]
    if case["key"].startswith("scenario."):
        exp = os.path.join(root, "only_scenario.yaml")
        if not os.path.exists(exp):
            with open(exp, "w") as fh:
                fh.write("name: battery\nstrategy: {name: finetune}\n")
        argv = ["run", exp, "eval_initial=false", "strategy.epochs=1"]
    else:
        argv = ["run", QUICKSTART] + FAST
    fixed = [a for a in QUIET + [f"output_dir={world['out']}"] if a.split("=")[0] != case["key"]]
    argv += fixed + case["select"] + [f"{case['key']}={case['value']}"]      # the bad value comes last
    last = case["key"].rsplit(".", 1)[-1]
    return argv, [case["key"], f"'{last}'", f" {last} ", f"{last}:", case["value"]]


# ---------------------------------------------------------------------------- cases: the CLI verbs
FILE_FAULTS = {
    "missing": None,
    "a folder": "DIR",
    "empty": b"",
    "not UTF-8": b"name: \xff\xfe\xfa\n",
    "binary junk": bytes(range(256)) * 4,
    "truncated YAML": b"strategy: {name: finetune\n  lr: [\n",
    "a list, not a mapping": b"- 1\n- 2\n",
    "unreadable": b"name: x\n",
}
FOLDER_FAULTS = ("missing", "a file", "empty folder", "foreign folder", "read-only run")
REPORT_FAULTS = FOLDER_FAULTS + ("damaged results",)   # resume repairs a damaged results.json: not a fault there


def _verbs():
    """{verb: argparse parser} from the real command line."""
    parser = make_parser()
    action = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    return dict(action.choices)


def _path_kind(action):
    """'file' | 'folder' | None for a positional argument or option (from its name and help)."""
    text = f"{action.dest} {action.metavar or ''} {action.help or ''}".lower()
    if "run_dir" in text or "folder" in text and "sweep" not in action.dest:
        return "folder"
    if any(w in text for w in ("yaml", "file", "path")):
        return "file"
    return None


def cli_cases():
    cases = []
    for verb, p in _verbs().items():
        cases.append((f"cli/{verb} --no-such-option", "cli", {"verb": verb, "fault": "unknown option"}))
        for a in p._actions:
            kind = _path_kind(a) if not a.option_strings or a.dest == "resume" else None
            if kind == "file":
                for fault in FILE_FAULTS:
                    cases.append((f"cli/{verb} {a.dest}: {fault}", "cli", {"verb": verb, "arg": a, "fault": fault}))
            elif kind == "folder":
                for fault in (FOLDER_FAULTS if a.dest == "resume" else REPORT_FAULTS):
                    cases.append((f"cli/{verb} {a.dest}: {fault}", "cli", {"verb": verb, "arg": a, "fault": fault}))
            if not a.option_strings and a.dest == "overrides":
                for value in ("no-equals-sign", "=1", "a..b=1"):
                    cases.append((f"cli/{verb} override {value}", "cli",
                                  {"verb": verb, "arg": a, "fault": "override", "value": value}))
            if a.option_strings and a.type in (int, float):
                for value in ("abc", "-1"):
                    cases.append((f"cli/{verb} {a.option_strings[0]} {value}", "cli",
                                  {"verb": verb, "arg": a, "fault": "option", "value": value}))
    return cases


def _make_file(path, fault):
    data = FILE_FAULTS[fault]
    if data == "DIR":
        os.makedirs(path)
    elif data is not None:
        with open(path, "wb") as fh:
            fh.write(data)


def _make_folder(world, path, fault):
    if fault == "a file":
        with open(path, "w") as fh:
            fh.write("precious\n")
    elif fault == "empty folder":
        os.makedirs(path)
    elif fault == "foreign folder":                   # a user's folder that merely holds a config.yaml
        os.makedirs(os.path.join(path, "sub"))
        shutil.copy(QUICKSTART, os.path.join(path, "config.yaml"))
        for name in ("notes.tmp", "sub/data.tmp", ".results.json.abcd1234.tmp"):
            with open(os.path.join(path, name), "w") as fh:
                fh.write("precious\n")
    elif fault in ("damaged results", "read-only run"):
        shutil.copytree(world["run"], path)
        if fault == "damaged results":
            res = os.path.join(path, "results.json")
            with open(res, "rb") as fh:
                data = fh.read()
            with open(res, "wb") as fh:
                fh.write(data[: len(data) // 2])
            os.remove(os.path.join(path, "checkpoints", "last.pt"))


def run_cli_case(world, capsys, case, tmp):
    verb, fault = case["verb"], case["fault"]
    out = ["--out", os.path.join(tmp, "out")] if verb in ("sweep", "reproduce") else []
    if fault == "unknown option":
        first = {"run": [QUICKSTART], "report": [world["run"]], "sweep": [QUICKSTART],
                 "reproduce": [QUICKSTART]}.get(verb, [])
        return [verb, *first, "--no-such-option"], ["no-such-option"], None
    a = case["arg"]
    if fault == "option":
        target = {"run": QUICKSTART, "sweep": _sweep_file(tmp), "reproduce": _reproduce_file()}.get(verb)
        return [verb, target, a.option_strings[0], case["value"], *out], [a.option_strings[0], case["value"]], None
    if fault == "override":
        target = {"run": QUICKSTART, "sweep": _sweep_file(tmp), "reproduce": _reproduce_file()}.get(verb)
        return [verb, target, case["value"], *out] + ([f"output_dir={world['out']}"] if verb == "run" else []), \
            [case["value"]], None
    path = os.path.join(tmp, "input")
    ctx = None
    if _path_kind(a) == "file":
        _make_file(path, fault)
        if fault == "unreadable":
            ctx = denied(path, write=False, read=True)
        names = [path]
    else:
        _make_folder(world, path, fault)
        if fault == "read-only run":
            ctx = denied(path)
        names = [path]
    argv = [verb, "--resume", path] if a.dest == "resume" else [verb, path]
    if verb == "run" and a.dest != "resume":
        argv += [f"output_dir={world['out']}"] + QUIET
    return argv + out, names, ctx


def _reproduce_file():
    from cl.reproduce import available
    return sorted(available().values())[0]


def _sweep_file(tmp):
    path = os.path.join(tmp, "s.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump({"base": QUICKSTART, "experiment": {"strategy.epochs": 1}}, fh)
    return path


# ---------------------------------------------------------------------------- cases: file formats
class Crafted:
    """A pickle that runs code when loaded without restrictions (it would create ``flag``)."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (open, (self.flag, "w"))


def _cifar_files(folder, names):
    os.makedirs(folder)
    for n in names:
        with open(os.path.join(folder, n), "wb") as fh:
            pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, fh, protocol=4)


DATA_FORMATS = {   # dataset adapter -> (files it reads under scenario.root, the file to break)
    "cifar10": (lambda r: _cifar_files(os.path.join(r, "cifar-10-batches-py"),
                                       [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
                "cifar-10-batches-py/test_batch"),
    "cifar100": (lambda r: _cifar_files(os.path.join(r, "cifar-100-python"), ["train", "test"]),
                 "cifar-100-python/train"),
    "mnist": (lambda r: _idx_files(os.path.join(r, "MNIST", "raw")), "MNIST/raw/t10k-images-idx3-ubyte"),
    "npz": (lambda r: np.savez(os.path.join(r, "d.npz"), x_train=np.zeros((4, 4), np.float32),
                               y_train=np.arange(4), x_test=np.zeros((4, 4), np.float32), y_test=np.arange(4)),
            "d.npz"),
    "imagefolder": (lambda r: _image_folder(r), "test/c1/0.png"),
    "cifar10_c": (lambda r: (np.save(os.path.join(r, "labels.npy"), np.arange(10).repeat(5) % 10),
                             np.save(os.path.join(r, "gaussian_noise.npy"), np.zeros((50, 32, 32, 3), np.uint8))),
                  "gaussian_noise.npy"),
}
CORRUPTED = {"cifar10_c"}   # read by the corruption_stream scenario (scenario.corrupted_root), not a dataset adapter
BYTE_FAULTS = ("empty", "truncated", "junk", "crafted pickle")


def _idx_files(folder):
    os.makedirs(folder)
    for stem, arr in (("train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8)),
                      ("train-labels-idx1-ubyte", np.arange(4, dtype=np.uint8)),
                      ("t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8)),
                      ("t10k-labels-idx1-ubyte", np.arange(4, dtype=np.uint8))):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with open(os.path.join(folder, stem), "wb") as fh:
            fh.write(header + arr.tobytes())


def _image_folder(root):
    from PIL import Image
    for split in ("train", "test"):
        for c in ("c0", "c1"):
            os.makedirs(os.path.join(root, split, c))
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(os.path.join(root, split, c, f"{i}.png"))


def _break(path, fault, flag):
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        if fault == "empty":
            pass
        elif fault == "truncated":
            fh.write(data[: max(1, len(data) // 2)])
        elif fault == "junk":
            fh.write(b"\x00not this format\xff" * 16)
        elif fault == "crafted pickle":
            pickle.dump({b"data": Crafted(flag), b"labels": [0]}, fh, protocol=2)


def data_cases():
    cases = [(f"data/{name}: {fault}", "data", {"dataset": name, "fault": fault})
             for name in DATA_FORMATS for fault in BYTE_FAULTS]
    cases += [("data/imagefolder: empty class folder", "data", {"dataset": "imagefolder", "fault": "empty class"})]
    for where in ("model.checkpoint", "resume"):
        cases += [(f"checkpoint/{where}: {fault}", "checkpoint", {"where": where, "fault": fault})
                  for fault in BYTE_FAULTS + ("foreign", "another run's")]
    return cases


def run_data_case(world, capsys, case, tmp):
    root = os.path.join(tmp, "data")
    os.makedirs(root)
    make, target = DATA_FORMATS[case["dataset"]]
    make(root)
    flag = os.path.join(tmp, "code-ran")
    path = os.path.join(root, target)
    if case["fault"] == "empty class":
        for f in os.listdir(os.path.dirname(path)):
            os.remove(os.path.join(os.path.dirname(path), f))
        path = os.path.dirname(path)
    else:
        _break(path, case["fault"], flag)
    if case["dataset"] in CORRUPTED:
        exp = os.path.join(tmp, "tta.yaml")
        with open(exp, "w") as fh:
            yaml.safe_dump({"name": "battery", "model": {"name": "small_cnn"}, "strategy": {"name": "source"},
                            "scenario": {"name": "corruption_stream", "data_format": case["dataset"],
                                         "corrupted_root": root, "corruptions": ["gaussian_noise"]}}, fh)
        return ["run", exp, f"output_dir={world['out']}"] + QUIET, [path], flag
    scen_root = path if case["dataset"] == "npz" else root
    argv = ["run", QUICKSTART, f"scenario.dataset={case['dataset']}", f"scenario.root={scen_root}",
            "scenario.n_experiences=2", f"output_dir={world['out']}"] + FAST + QUIET
    return argv, [path], flag


def run_checkpoint_case(world, capsys, case, tmp):
    flag = os.path.join(tmp, "code-ran")
    if case["where"] == "resume":
        run_dir = os.path.join(tmp, "run")
        shutil.copytree(world["run"], run_dir)
        path = os.path.join(run_dir, "checkpoints", "last.pt")
        argv = ["run", "--resume", run_dir]
    else:
        path = os.path.join(tmp, "weights.pt")
        shutil.copy(os.path.join(world["run"], "model.pt"), path)
        argv = ["run", QUICKSTART, f"model.checkpoint={path}", f"output_dir={world['out']}"] + FAST + QUIET
    fault = case["fault"]
    if fault == "foreign":
        torch.save({"conv.weight": torch.zeros(3, 3)} if case["where"] == "model.checkpoint" else [1, 2, 3], path)
    elif fault == "another run's":
        shutil.copy(os.path.join(world["other"], "checkpoints", "last.pt"), path)
        if case["where"] == "model.checkpoint":
            torch.save({"x": torch.zeros(1)}, path)
        return argv, [path, "strategy.name", "missing keys"], flag
    else:
        _break(path, fault, flag)
    return argv, [path], flag


# ---------------------------------------------------------------------------- the sample and the test
def all_cases():
    return schema_cases() + cli_cases() + data_cases()


def sample(cases, n, seed):
    """A stratified sample of ``n`` cases (all of them when n >= len(cases)): about a third from the
    config schema, the rest spread over the CLI, data and checkpoint families by their sizes."""
    if n >= len(cases):
        return list(cases)
    rng = random.Random(seed)
    families = {}
    for c in cases:
        families.setdefault(c[1], []).append(c)
    other = {f: cs for f, cs in families.items() if f != "schema"}
    n_other = min(sum(map(len, other.values())), n - n // 3)
    total = sum(map(len, other.values()))
    picked = []
    for f, cs in other.items():
        picked += rng.sample(cs, min(len(cs), max(1, round(n_other * len(cs) / total))))
    rest = [c for c in cases if c not in picked]
    picked += rng.sample(rest, max(0, n - len(picked)))
    return sorted(picked, key=cases.index)


# A quick sample runs with the test suite; a larger one (or every case) with -m slow.
SEED = int(os.environ.get("CL_BATTERY_SEED", "0"))
WANT = os.environ.get("CL_BATTERY_SAMPLE", "150")
ALL = all_cases()
QUICK = sample(ALL, 40, SEED)
SLOW = [c for c in (ALL if WANT == "all" else sample(ALL, int(WANT), SEED)) if c not in QUICK]


def test_battery_is_generated_from_the_schema_and_the_cli():
    """The battery covers every field and verb: a new config field or CLI verb gets cases with no edit."""
    from cl.registry import STRATEGIES
    ids = [c[0] for c in all_cases()]
    assert len(ids) == len(set(ids))
    for verb in _verbs():
        assert any(i.startswith(f"cli/{verb} ") for i in ids), verb
    for name in STRATEGIES.names():
        assert any(i.startswith(f"schema/{name}:") for i in ids) or name in ("finetune", "joint", "source", "bn"), name
    assert any("schema/strategy.lr=" in i or ":strategy.lr=" in i for i in ids)
    assert len(ids) > 500


@pytest.mark.parametrize("case", QUICK + [pytest.param(c, marks=pytest.mark.slow) for c in SLOW],
                         ids=[c[0] for c in QUICK + SLOW])
def test_bad_input_is_refused_cleanly(world, capsys, tmp_path, case):
    _, family, spec = case
    tmp = str(tmp_path)
    ctx, flag = None, None
    if family == "schema":
        argv, names = run_schema_case(world, capsys, spec)
    elif family == "cli":
        argv, names, ctx = run_cli_case(world, capsys, spec, tmp)
    elif family == "data":
        argv, names, flag = run_data_case(world, capsys, spec, tmp)
    else:
        argv, names, flag = run_checkpoint_case(world, capsys, spec, tmp)
    capsys.readouterr()
    before = {**snapshot(world["root"]), **{"case/" + k: v for k, v in snapshot(tmp).items()}}
    cwd = os.getcwd()
    os.chdir(tmp)                     # a verb's default output folder (runs/...) lands in tmp
    try:
        with ctx or contextlib.nullcontext():
            code = main(argv)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    after = {**snapshot(world["root"]), **{"case/" + k: v for k, v in snapshot(tmp).items()}}
    assert_refused(code, err, names, before, after, may_succeed=spec.get("may_succeed", False))
    if flag:
        assert not os.path.exists(flag), "loading the file ran code from it"
