"""Bad-input battery: each case exits with status 2 and a one-paragraph message naming the problem
and the fix, no traceback (unless --debug), and nothing already written is damaged."""
import os

import numpy as np
import pytest
import torch

from cl.cli import main
from conftest import QUICKSTART

QUIET = ["logging.progress=false", "logging.console=false", "logging.tensorboard=false", "logging.plots=false"]


def run_cli(capsys, args):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def assert_clean_error(code, err, *words):
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert "\n\n" not in err.strip()                       # one paragraph
    for w in words:
        assert w.lower() in err.lower(), (w, err)


@pytest.fixture
def out(tmp_path):
    return f"output_dir={tmp_path / 'runs'}"


def test_malformed_yaml(tmp_path, capsys, out):
    p = tmp_path / "bad.yaml"
    p.write_text("strategy: {name: finetune\n  lr: [\n")
    assert_clean_error(*run_cli(capsys, ["run", str(p), out]), "malformed yaml", str(p))
    assert p.read_text() == "strategy: {name: finetune\n  lr: [\n"


@pytest.mark.parametrize("override,words", [
    ("strategy.lrr=0.1", ["strategy.lrr", "did you mean 'lr'"]),
    ("strategy.epochs=many", ["strategy.epochs", "int"]),
    ("strategy.lr=-0.1", ["strategy.lr", ">= 0"]),
    ("strategy.name=nope", ["unknown strategy", "finetune"]),
    ("scenario.class_order=[0,1,2,3,4,5,6,7,8,8]", ["class_order", "duplicated: [8]"]),
    ("scenario.class_order=[0,1,2,3,4,5,6,7,8,12]", ["class_order", "unknown: [12]"]),
    ("scenario.n_experiences=20", ["cannot split", "experiences"]),
    ("model.name=resnet9000", ["unknown model", "mlp"]),
])
def test_config_errors(capsys, out, override, words):
    assert_clean_error(*run_cli(capsys, ["run", QUICKSTART, override, out] + QUIET), *words)


def test_debug_shows_traceback(out):
    from cl.errors import ConfigError
    with pytest.raises(ConfigError):
        main(["--debug", "run", QUICKSTART, "strategy.lrr=1", out])


def test_empty_dataset(tmp_path, capsys, out):
    p = tmp_path / "empty.npz"
    np.savez(p, x_train=np.zeros((0, 4), np.float32), y_train=np.zeros(0, np.int64),
             x_test=np.zeros((0, 4), np.float32), y_test=np.zeros(0, np.int64))
    code, err = run_cli(capsys, ["run", QUICKSTART, "scenario.dataset=npz", f"scenario.root={p}", out] + QUIET)
    assert_clean_error(code, err, "empty")


def test_missing_dataset_says_where_and_how(tmp_path, capsys, out):
    code, err = run_cli(capsys, ["run", QUICKSTART, "scenario.dataset=cifar10", f"scenario.root={tmp_path / 'nowhere'}",
                                 out] + QUIET)
    assert_clean_error(code, err, str(tmp_path / "nowhere"), "download")


def _saved_model(tmp_path):
    assert main(["run", QUICKSTART, "scenario.n_experiences=1", "strategy.epochs=1", "save_model=true",
                 f"output_dir={tmp_path / 'src'}"] + QUIET) == 0
    (name,) = os.listdir(tmp_path / "src" / "quickstart")
    return tmp_path / "src" / "quickstart" / name / "model.pt"


def test_truncated_checkpoint(tmp_path, capsys, out):
    model = _saved_model(tmp_path)
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    code, err = run_cli(capsys, ["run", QUICKSTART, f"model.checkpoint={model}", out] + QUIET)
    assert_clean_error(code, err, "truncated", str(model))
    assert model.read_bytes() == data[: len(data) // 2]         # untouched


def test_checkpoint_of_another_architecture(tmp_path, capsys, out):
    from cl.models.small import small_cnn
    p = tmp_path / "cnn.pt"
    torch.save(small_cnn(10, (1, 8, 8)).state_dict(), p)
    code, err = run_cli(capsys, ["run", QUICKSTART, f"model.checkpoint={p}", out] + QUIET)
    assert_clean_error(code, err, "missing keys", "unexpected keys", "model.name")


def test_run_name_cannot_escape_output_dir(tmp_path, capsys):
    outdir = tmp_path / "runs"
    assert main(["run", QUICKSTART, "name=../../escape", "strategy.epochs=1", f"output_dir={outdir}"] + QUIET) == 0
    assert sorted(os.listdir(tmp_path)) == ["runs"]
    assert os.listdir(outdir) == ["escape"]


def test_unwritable_output_folder(tmp_path, capsys):
    """Runs as root too (how CI runs): ``denied`` chmods the folder and, because root ignores
    permission bits, also makes the OS calls that would write under it fail with EACCES."""
    from test_reliability_battery import denied, snapshot
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("precious")
    before = snapshot(tmp_path)
    with denied(ro):
        code, err = run_cli(capsys, ["run", QUICKSTART, f"output_dir={ro}"] + QUIET)
    assert_clean_error(code, err, "output_dir", str(ro), "permission denied")
    assert snapshot(tmp_path) == before


def test_disk_full_mid_run_says_what_was_saved_and_how_to_resume(tmp_path, capsys, monkeypatch):
    """ENOSPC on the third checkpoint: exit 2, the results of experience 2 intact, and resuming
    once there is space ends with the same matrix as a run that never hit the full disk."""
    import errno
    import json
    from cl import io as cl_io
    args = ["run", QUICKSTART, "strategy.epochs=1", "scenario.train_fraction=0.3", "eval_initial=false"] + QUIET
    assert main(args + [f"output_dir={tmp_path / 'clean'}"]) == 0
    (clean,) = [os.path.join(r, "results.json") for r, _, fs in os.walk(tmp_path / "clean") if "results.json" in fs]
    real_save, calls = cl_io.torch_save, []

    def full_disk(obj, path):
        calls.append(path)
        if len(calls) == 3:
            raise cl_io.OutputError.of(path, OSError(errno.ENOSPC, "No space left on device"))
        return real_save(obj, path)

    monkeypatch.setattr(cl_io, "torch_save", full_disk)
    code, err = run_cli(capsys, args + [f"output_dir={tmp_path / 'full'}"])
    run_dir = os.path.dirname(os.path.dirname(calls[-1]))
    assert_clean_error(code, err, "disk is full", "2 of 5 experiences done", f"cl run --resume {run_dir}")
    with open(os.path.join(run_dir, "results.json")) as f:
        assert json.load(f)["completed_experiences"] == 2
    monkeypatch.setattr(cl_io, "torch_save", real_save)
    assert main(["run", "--resume", run_dir]) == 0
    with open(os.path.join(run_dir, "results.json")) as f, open(clean) as g:
        assert json.load(f)["accuracy_matrix"] == json.load(g)["accuracy_matrix"]


def test_output_dir_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("precious")
    code, err = run_cli(capsys, ["run", QUICKSTART, f"output_dir={f}"] + QUIET)
    assert_clean_error(code, err, "output_dir")
    assert f.read_text() == "precious"


PLUGIN_FAULTS = {
    "syntax error": ("def broken(:\n", "syntax error"),
    "raises at import": ("raise RuntimeError('plugin exploded')\n", "plugin exploded"),
    "not a class or function": ("Thing = 42\n", "not a class"),
    "no such attribute": ("x = 1\n", "no attribute 'Thing'"),
}


@pytest.mark.parametrize("kind", ["strategy", "scenario", "model"])
@pytest.mark.parametrize("fault", list(PLUGIN_FAULTS))
def test_plugin_module_faults_are_one_paragraph(tmp_path, capsys, monkeypatch, out, kind, fault):
    """A plugin named as module:Name that does not import, raises while importing, or names
    something unusable used to end in a traceback."""
    source, words = PLUGIN_FAULTS[fault]
    module = f"bad_plugin_{kind}_{fault.replace(' ', '_')}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = run_cli(capsys, ["run", QUICKSTART, f"{kind}.name={module}:Thing", out] + QUIET)
    assert_clean_error(code, err, module, words)


def test_experience_without_test_samples_is_an_error_not_a_zero(tmp_path, capsys, out):
    """Classes 8 and 9 have training images but no test images: experience 5 would have scored
    0.0 and entered the averages."""
    p = tmp_path / "no_test_for_8_9.npz"
    rng = np.random.default_rng(0)
    y_test = np.arange(8).repeat(3)
    np.savez(p, x_train=rng.random((40, 4), dtype=np.float32), y_train=np.arange(10).repeat(4),
             x_test=rng.random((len(y_test), 4), dtype=np.float32), y_test=y_test)
    code, err = run_cli(capsys, ["run", QUICKSTART, "scenario.dataset=npz", f"scenario.root={p}", out] + QUIET)
    assert_clean_error(code, err, "experience 4", "no test samples", "[8, 9]")
    assert not os.path.exists(out.split("=", 1)[1])
