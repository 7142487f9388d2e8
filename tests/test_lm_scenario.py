"""The text_domains scenario end to end on text the test writes: split, budget, subset, quality filter,
Hugging Face datasets from a local folder, the loss matrix through the runner, and bad input."""
import json
import os

import numpy as np
import pytest
import torch

from cl.config import build_config
from cl.errors import ConfigError, DataError
from cl.runner import run
from scenarios.text_domains import TextDomainsConfig, keep_best, random_subset, text_domains
from scenarios.text_sources import split_documents

WORDS = {"en": "the quick brown fox jumps over the lazy dog and runs away".split(),
         "es": "el rápido zorro marrón salta sobre el perro perezoso y se va".split()}


def write_domain(path, lang, lines=200, seed=0):
    rng = np.random.default_rng(seed)
    text = "".join(" ".join(rng.choice(WORDS[lang], 8)) + ".\n" for _ in range(lines))
    path.write_text(text, encoding="utf-8")
    return text


def scen(tmp_path, **kw):
    kw.setdefault("domains", ["en.txt", "es.txt"])
    return text_domains(TextDomainsConfig(root=str(tmp_path), context=16, **kw), seed=0)


@pytest.fixture
def two(tmp_path):
    write_domain(tmp_path / "en.txt", "en")
    write_domain(tmp_path / "es.txt", "es", seed=1)
    return tmp_path


def test_split_is_the_last_five_percent_of_lines_and_budget_sets_windows(two):
    s = scen(two, train_tokens=1600)
    text = (two / "en.txt").read_bytes()
    lines = text.splitlines(keepends=True)
    held = b"".join(lines[-10:])                                  # 5% of 200 lines
    e0 = s.experiences[0]
    assert s.metric == "loss" and s.num_classes == 256 and s.input_shape == (16,)
    assert e0.test.num_tokens == len(held) and bytes(e0.test.tokens.tolist()) == held
    assert e0.train.num_tokens == len(text) - len(held)
    assert len(e0.train) == 100 and len(e0.test) == (len(held) - 1) // 16   # 1600 tokens / 16
    assert s.domains == ["en", "es"] and s.stats["en"]["budget_tokens"] == 1600


def test_subset_for_k_epochs_and_quality_filter(two, tmp_path):
    s = scen(two, subset_tokens=800, subset_epochs=3)
    e0, e1 = s.experiences
    assert "subset_documents" not in s.stats["en"]                  # subset_from=1: not the first domain
    used = s.stats["es"]["train_tokens_used"]
    assert 800 <= used < 800 + 200 and len(e1.train) == 3 * (used // 16)
    with pytest.raises(ConfigError, match="Make them equal"):
        scen(two, subset_tokens=800, subset_epochs=3, train_tokens=1000)
    mod = tmp_path / "myscores.py"
    mod.write_text("def score(texts):\n    return [t.count('zorro') for t in texts]\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        s = scen(two, quality_score="myscores:score", quality_keep=0.5, quality_from=0)
    finally:
        sys.path.remove(str(tmp_path))
    kept_es = bytes(s.experiences[1].train.tokens.tolist()).decode()
    assert "zorro" not in kept_es                                   # the lowest scores (no 'zorro') are kept
    assert 0.4 < s.stats["es"]["train_tokens_used"] / s.stats["es"]["train_tokens_available"] < 0.6


def test_document_helpers_known_values():
    assert split_documents("a\nb\n\nc") == ["a\n", "b\n", "\n", "c"]
    assert split_documents("x\n\ny\n\n\nz", r"\n\n+") == ["x\n\n", "y\n\n\n", "z"]
    ids = [np.zeros(n) for n in (10, 10, 10, 10)]
    assert keep_best(ids, [3.0, 0.5, 2.0, 1.0], 0.5).tolist() == [1, 3]
    sub = random_subset(ids, 20, seed=0)
    assert len(sub) == 2 and list(sub) == sorted(sub)


def test_model_quality_score_uses_the_checkpoint(two, tmp_path):
    from cl.models.gpt import gpt
    torch.manual_seed(0)
    torch.save(gpt(256, (16,), size="test").state_dict(), tmp_path / "init.pt")
    s = scen(two, quality_score="model", quality_keep=0.5,
             quality_model={"name": "gpt", "args": {"size": "test"}, "checkpoint": str(tmp_path / "init.pt")})
    assert s.stats["es"]["quality_kept_documents"] < s.stats["es"]["documents"]
    with pytest.raises(ConfigError, match="quality_model"):
        scen(two, quality_score="model", quality_keep=0.5)


def test_folders_and_hf_datasets_from_a_local_folder(two, tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "a.py").write_text("def f(x):\n    return x + 1\n" * 30)
    (folder / "b.py").write_text("class A:\n    pass\n" * 30)
    (folder / "notes.md").write_text("ignored\n")
    ds = tmp_path / "hfds"
    ds.mkdir()
    rng = np.random.default_rng(0)
    with open(ds / "train.jsonl", "w") as f:
        for _ in range(400):
            f.write(json.dumps({"content": " ".join(rng.choice(WORDS["en"], 6))}) + "\n")
    s = scen(two, domains=[{"path": "code", "glob": "*.py"}, {"hf": str(ds), "text_field": "content", "name": "web"}],
             train_tokens=2000)
    assert s.domains == ["code", "web"]
    code = bytes(s.experiences[0].train.tokens.tolist()).decode()
    assert "def f" in code and "class A" in code and "ignored" not in code
    web = s.stats["web"]
    assert web["train_tokens_available"] >= 2000 and len(s.experiences[1].train) == 2000 // 16
    assert s.experiences[1].test.num_tokens > 16                    # every 20th record held out
    with pytest.raises(DataError, match="no field 'text'"):
        scen(two, domains=[{"hf": str(ds)}], train_tokens=2000)
    with pytest.raises(ConfigError, match="train_tokens"):
        scen(two, domains=[{"hf": str(ds), "text_field": "content"}])


def test_unknown_hf_dataset_offline_says_how_to_use_local_files(two, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError, match="needs a download.*local files"):
        scen(two, domains=["hf:nobody-here/no-such-dataset"], train_tokens=1000)


def test_bad_text_files_name_the_file_and_the_fix(tmp_path):
    write_domain(tmp_path / "en.txt", "en")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 50)
    (tmp_path / "short.txt").write_text("one line\n" * 20)
    with pytest.raises(DataError, match="empty.txt is empty"):
        scen(tmp_path, domains=["en.txt", "empty.txt"])
    with pytest.raises(DataError, match="latin1.txt is not UTF-8.*iconv"):
        scen(tmp_path, domains=["latin1.txt"])
    with pytest.raises(DataError, match="short.txt has 9 tokens in its held-out part.*context"):
        scen(tmp_path, domains=["en.txt", "short.txt"])
    with pytest.raises(DataError, match="not found"):
        scen(tmp_path, domains=["missing.txt"])
    with pytest.raises(ConfigError, match="unknown key 'paht'.*did you mean 'path'"):
        scen(tmp_path, domains=[{"paht": "en.txt"}])
    with pytest.raises(ConfigError, match="empty"):
        scen(tmp_path, domains=[])


def lm_cfg(tmp_path, strategy="finetune", **over):
    raw = {"scenario": {"name": "text_domains", "root": str(tmp_path), "domains": ["en.txt", "es.txt"], "context": 16,
                        "train_tokens": 3200, "eval_tokens": 320},
           "model": {"name": "gpt", "args": {"size": "test"}},
           "strategy": {"name": strategy, "optimizer": "adamw", "lr": 3e-3, "batch_size": 16, "eval_batch_size": 8},
           "output_dir": str(tmp_path), "threads": 1, "eval_every": 5,
           "logging": {"progress": False, "console": False, "tensorboard": False, "plots": True}}
    for k, v in over.items():
        node = raw
        *parents, last = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return build_config(raw)


def test_runner_writes_loss_matrix_curves_throughput_and_plots(two):
    res = run(lm_cfg(two), str(two / "run"))
    L, P = np.array(res["loss_matrix"]), np.array(res["perplexity_matrix"])
    assert res["metric"] == "loss" and L.shape == (2, 2) and "accuracy_matrix" not in res
    assert np.allclose(P, np.exp(L))
    init = np.array(res["initial_loss"])
    assert np.allclose(init, np.log(256), atol=0.1)                  # untrained: ~uniform over bytes
    assert L[0, 0] < init[0] - 1.0 and L[1, 1] < init[1] - 1.0        # learns each domain
    m = res["metrics"]
    assert m["forgetting"] == pytest.approx(L[1, 0] - L[0, 0]) and m["backward_transfer"] == pytest.approx(-m["forgetting"])
    assert m["forward_transfer"] == pytest.approx(init[1] - L[0, 1])
    assert res["timings"]["train_tokens"] == 2 * 3200 and res["timings"]["tokens_per_s"] > 0
    curves = res["continual_eval"]
    assert [c["step"] for c in curves] == [5, 10, 13, 15, 20, 25, 26] and len(curves[-1]["loss"]) == 2   # + last steps
    assert res["continual_metrics"]["higher_is_better"] is False and m["min_acc"] >= L[0, 0] - 1e-9   # worst = highest
    assert os.path.isfile(two / "run" / "plots" / "loss_matrix.png")
    assert os.path.isfile(two / "run" / "plots" / "continual_eval.png")
    assert "loss,1,0," in open(two / "run" / "metrics.csv").read()


def test_vocabulary_mismatch_stops_before_training(two):
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        run(lm_cfg(two, **{"model.args": {"size": "test", "vocab_size": 100}}), str(two / "bad"))
    assert not os.path.exists(two / "bad" / "results.json")


def test_eval_only_domain_and_a_union_of_files(two):
    s = scen(two, domains=[{"path": "en.txt", "train": False}, {"path": ["en.txt", "es.txt"], "name": "union"}],
             train_tokens=1600)
    up, union = s.experiences
    assert len(up.train) == 0 and list(up.train.batches(4, shuffle=True)) == [] and len(up.test) > 0
    en, es = (two / "en.txt").read_bytes().splitlines(True), (two / "es.txt").read_bytes().splitlines(True)
    assert union.train.num_tokens == len(b"".join(en[:-10] + es[:-10]))     # each file split on its own: no
    assert union.test.num_tokens == len(b"".join(en[-10:] + es[-10:]))      # held-out line leaks into training
    from cl.rundir import check_stream
    check_stream(s)                                                          # evaluation-only is not "empty"
    up.train.eval_only = False
    with pytest.raises(DataError, match="no training samples"):
        check_stream(s)
    with pytest.raises(ConfigError, match="give it a 'name'"):
        scen(two, domains=[{"path": ["en.txt", "es.txt"]}])
