"""The GPU-path run options, checked on the CPU where they can be: amp (bf16 autocast),
model.channels_last, compile."""
import pytest
import torch

from cl.config import load_config
from cl.errors import ConfigError
from cl.runner import build, run
from strategies.finetune import Finetune

QUIET = ["logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false",
         "device=cpu", "threads=1"]
TINY = ["scenario.name=class_split", "scenario.dataset=synthetic", "scenario.dataset_args.num_classes=4",
        "scenario.dataset_args.n_train=12", "scenario.dataset_args.n_test=6", "scenario.n_experiences=2",
        "strategy.batch_size=8", "eval_initial=false", "strategy.name=finetune"]


def flat(matrix):
    return [v for row in matrix for v in row]


def cfg(tmp_path, *extra):
    return load_config(None, [f"output_dir={tmp_path}", *TINY, *QUIET, *extra])


def test_bf16_autocast_runs_the_model_in_bfloat16_on_cpu(tmp_path, monkeypatch):
    seen = []
    real = Finetune.loss

    def spy(self, batch):
        loss = real(self, batch)
        seen.append(self.model(batch.x).dtype)
        return loss
    monkeypatch.setattr(Finetune, "loss", spy)
    r = build(cfg(tmp_path, "model.name=mlp", "amp=true", "amp_dtype=bf16"))
    assert r.strategy.use_amp and r.strategy.scaler is None           # bf16: no gradient scaler
    res = run(cfg(tmp_path, "model.name=mlp", "amp=true", "amp_dtype=bf16"), str(tmp_path / "bf16"))
    assert res["status"] == "complete" and seen and set(seen) == {torch.bfloat16}
    w = r.strategy.model.state_dict()
    assert all(v.dtype == torch.float32 for v in w.values() if v.is_floating_point())   # weights stay fp32


def test_fp16_stays_off_on_cpu_and_bad_dtype_is_a_config_error(tmp_path):
    r = build(cfg(tmp_path, "model.name=mlp", "amp=true"))             # default fp16: CUDA only
    assert not r.strategy.use_amp
    with pytest.raises(ConfigError, match="amp_dtype"):
        cfg(tmp_path, "model.name=mlp", "amp=true", "amp_dtype=fp8")


def test_channels_last_model_gives_the_default_layout_results(tmp_path):
    small = ["model.name=small_cnn", "model.args.width=4"]
    r = build(cfg(tmp_path, *small, "model.channels_last=true"))
    convs = [m.weight for m in r.strategy.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    a = run(cfg(tmp_path, *small, "model.channels_last=true"), str(tmp_path / "cl"))
    b = run(cfg(tmp_path, *small), str(tmp_path / "default"))
    assert flat(a["accuracy_matrix"]) == pytest.approx(flat(b["accuracy_matrix"]), abs=1 / 12 + 1e-9)   # <= 1 sample


@pytest.mark.slow      # compiling (inductor, a C++ compiler) takes minutes on a loaded CPU
def test_compile_gives_the_eager_results(tmp_path):
    try:
        a = run(cfg(tmp_path, "model.name=mlp", "compile=true"), str(tmp_path / "compiled"))
    except Exception as e:  # noqa: BLE001 - no working compiler toolchain on this machine
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {str(e)[:200]}")
    b = run(cfg(tmp_path, "model.name=mlp"), str(tmp_path / "eager"))
    assert flat(a["accuracy_matrix"]) == pytest.approx(flat(b["accuracy_matrix"]), abs=1 / 12 + 1e-9)
