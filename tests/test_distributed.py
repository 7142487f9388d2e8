"""Data-parallel runs (cl/distributed.py, docs/distributed.md).

``test_two_gloo_ranks_give_the_one_process_results`` starts torchrun ONCE with 2 gloo ranks on the
CPU (tests/_distributed_worker.py) and runs, inside, every required strategy (finetune, ER with a
crash after experience 1 and --resume, DER++, LwF, L2P and CODA-Prompt on the tiny ViT) plus every
other registered strategy (each must run or be refused with a ConfigError before anything is
written); the same runs are then made here in one process and compared.

Tolerance: the accuracy matrices must be equal; every tensor of the final checkpoint (model,
buffer, teacher, prompts) within an absolute 1e-5 (2 ranks sum their shards' gradient
contributions, X1^T G1 + X2^T G2, where one process computes X^T G in one GEMM: the float32
rounding differs in the last bits each step, ~1e-7, so bit-equality is not what the arithmetic
promises; a wrong gradient, a missed sync or a diverged buffer is off by orders of magnitude more).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from cl import distributed as ddp
from cl.config import load_config
from cl.errors import ConfigError
from cl.registry import STRATEGIES, load_builtins
from cl.runner import build

load_builtins()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _distributed_worker import run_kept  # noqa: E402

QUIET = ["logging.tensorboard=false", "logging.plots=false", "logging.progress=false", "logging.console=false",
         "device=cpu", "threads=1"]
# batch 7 over 2 ranks: shards of 4 and 3 rows; 40 samples per experience: a last batch of 5 (3 + 2).
TINY = ["scenario.name=class_split", "scenario.dataset=synthetic", "scenario.dataset_args.num_classes=4",
        "scenario.dataset_args.n_train=20", "scenario.dataset_args.n_test=10", "scenario.n_experiences=2",
        "strategy.batch_size=7", "eval_initial=false"]
MLP = ["model.name=mlp", "model.args.hidden=16"]
VIT = ["model.name=vit_tiny_cifar", "model.args.embed_dim=16", "model.args.depth=5", "model.args.num_heads=2",
       "model.args.patch_size=4"]
REQUIRED = {"finetune": MLP, "er": MLP + ["strategy.minibatch_size=5", "strategy.buffer_size=20"],
            "derpp": MLP + ["strategy.minibatch_size=5", "strategy.buffer_size=20"], "lwf": MLP,
            "l2p": VIT, "coda_prompt": VIT + ["strategy.pool_size=10"]}
TOL = 1e-5
CRASH = {"er"}          # crashed after experience 1, then resumed, under torchrun


def flat_tensors(a, b, prefix):
    """(key, tensor of a, tensor of b) for every floating tensor in two nested state dicts of the same shape."""
    if torch.is_tensor(a):
        return [(prefix, a, b)] if a.is_floating_point() else ([] if torch.equal(a, b) else [(prefix, a.double(), b.double())])
    if isinstance(a, dict):
        assert set(a) == set(b), prefix
        return [t for k in a for t in flat_tensors(a[k], b[k], f"{prefix}.{k}")]
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), prefix
        return [t for k, (x, y) in enumerate(zip(a, b)) for t in flat_tensors(x, y, f"{prefix}[{k}]")]
    assert a == b, prefix
    return []


def overrides(name, model, out, *extra):
    return [f"name={name}", f"output_dir={out}", f"strategy.name={name}", *TINY, *model, *QUIET, *extra]


def jobs(out):
    out_jobs = [{"key": n, "overrides": overrides(n, m, out), "crash": n in CRASH} for n, m in REQUIRED.items()]
    out_jobs += [{"key": n, "overrides": overrides(n, MLP, out)} for n in STRATEGIES.names() if n not in REQUIRED]
    # refusals that are not the strategy's: a BatchNorm model, the online protocol
    out_jobs.append({"key": "bn_model", "overrides": overrides("finetune", ["model.name=small_cnn", "model.args.width=4"], out)})
    out_jobs.append({"key": "online", "overrides": [
        "name=online", f"output_dir={out}", "strategy.name=tent", "scenario.name=synthetic_shift",
        "scenario.n_per_class=8", "scenario.n_domains=2", "strategy.batch_size=8", *MLP, *QUIET]})
    return out_jobs


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    spec = jobs(str(out))
    with open(out / "jobs.json", "w") as f:
        json.dump(spec, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(HERE, "_distributed_worker.py"), str(out / "jobs.json"), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = {}
    for job in spec:
        with open(out / f"{job['key']}.json") as f:
            records[job["key"]] = json.load(f)
    with open(out / "rank1_writes.json") as f:
        writes = json.load(f)
    return out, spec, records, writes


@pytest.mark.slow
def test_two_gloo_ranks_give_the_one_process_results(two_ranks, tmp_path):
    out, spec, records, writes = two_ranks
    assert writes == [], f"rank 1 wrote files: {writes[:5]}"        # rank 0 alone writes
    for job in spec:
        name, rec = job["key"], records[job["key"]]
        if name in REQUIRED:
            assert "refused" not in rec, f"{name} was refused: {rec.get('refused')}"
        if "refused" in rec:                     # refused cleanly: a ConfigError, nothing written
            assert "one process" in rec["refused"], rec["refused"]
            assert not os.path.exists(out / name), f"{name} was refused but wrote {out / name}"
            continue
        assert rec["world"] == 2 and rec["status"] == "complete", (name, rec)
        assert rec["gathers"] > 0, f"{name}: no model call was split over the ranks"
        assert os.path.isfile(out / name / "results.json") and os.path.isfile(out / name / "checkpoints" / "last.pt")
        single, check = run_kept(load_config(None, job["overrides"] + [f"output_dir={tmp_path}"]), str(tmp_path / name))
        assert rec["R"] == single["accuracy_matrix"], f"{name}: 2 ranks {rec['R']} vs 1 process {single['accuracy_matrix']}"
        assert rec["R_task"] == single["task_il_accuracy_matrix"], name
        ours = torch.load(out / name / "checkpoints" / "last.pt", weights_only=True)["strategy"]
        theirs = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["strategy"]
        for key in ("model", "extra"):
            for k, a, b in flat_tensors(ours[key], theirs[key], key):
                assert torch.allclose(a.double(), b.double(), rtol=0, atol=TOL), (
                    f"{name}: {k} differs by {(a.double() - b.double()).abs().max():.3g} between 2 ranks and 1 process")
    assert records["bn_model"]["refused"].count("BatchNorm") and records["online"]["refused"].count("online")
    ran = sorted(k for k, r in records.items() if "refused" not in r)
    assert set(REQUIRED) <= set(ran)


def test_shard_sizes_cover_the_batch_in_rank_order():
    assert ddp.shard_sizes(10, 4) == [3, 3, 2, 2]
    assert ddp.shard_sizes(7, 2) == [4, 3] and ddp.shard_sizes(1, 2) == [1, 0]
    assert all(sum(ddp.shard_sizes(n, w)) == n for n in range(20) for w in (1, 2, 3, 8))


def test_refusals_come_from_build_before_anything_is_written(tmp_path, monkeypatch):
    """Without spawning: with 2 ranks pretended, build refuses undeclared strategies, online runs and
    BatchNorm models, and accepts a declared one (a subclass must declare it again)."""
    monkeypatch.setattr(ddp, "active", lambda: True)
    monkeypatch.setattr(ddp, "world", lambda: 2)
    with pytest.raises(ConfigError, match="distributed_ok"):
        build(load_config(None, overrides("ewc", MLP, tmp_path)))
    with pytest.raises(ConfigError, match="BatchNorm"):
        build(load_config(None, overrides("finetune", ["model.name=small_cnn", "model.args.width=4"], tmp_path)))
    build(load_config(None, overrides("finetune", MLP, tmp_path)))
    assert not list(tmp_path.iterdir())

    class Sub(STRATEGIES.get("er")):
        pass
    assert "distributed_ok" not in Sub.__dict__     # inherits nothing: check() refuses it


@pytest.mark.slow      # starts torchrun and 2 fresh Python processes (~1 min on the loaded CI machine)
def test_cl_run_nproc_2_writes_one_run_folder_with_the_one_process_results(tmp_path):
    from cl.cli import main
    args = [f"output_dir={tmp_path / 'one'}", *TINY, *MLP, *QUIET, "strategy.name=derpp", "strategy.epochs=1", "name=x"]
    assert main(["run", os.path.join(os.path.dirname(HERE), "experiments", "quickstart.yaml"), *args]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    two = [a.replace(str(tmp_path / "one"), str(tmp_path / "two")) for a in args]
    proc = subprocess.run([sys.executable, "-m", "cl", "run", "--nproc", "2",
                           os.path.join(os.path.dirname(HERE), "experiments", "quickstart.yaml"), *two],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (one,), (folder,) = list((tmp_path / "one" / "x").iterdir()), list((tmp_path / "two" / "x").iterdir())
    with open(one / "results.json") as f, open(folder / "results.json") as g:
        a, b = json.load(f), json.load(g)
    assert b["accuracy_matrix"] == a["accuracy_matrix"] and b["status"] == "complete"
