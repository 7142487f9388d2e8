"""``text_domains``: continual pre-training of a language model over a sequence of text domains.

One experience per domain, in the order of ``scenario.domains``. Each experience trains on
random context windows of its domain's training tokens (``cl.tokens.TokenData``) and every
domain is evaluated on the fixed windows of its held-out text, so the runner's matrix is the
mean next-token loss (nats per token; perplexity = exp) of every domain after every experience
(``Scenario.metric = "loss"``, lower is better).

A domain is a file or folder (relative paths are joined to ``scenario.root``; the last
``holdout`` = 5% of the lines is held out, as ``shared/data/text/README.md`` prescribes), or
``hf:NAME`` for a Hugging Face dataset (streamed; every 20th record held out), or
``{synthetic: SEED, lines: N}`` (generated pseudo-text: a stand-in for tests and smoke runs), or a mapping with
``path: [file, ...]`` (several files as one domain, each split 95/5 on its own: e.g. the union of
domains for the re-training baseline), ``train: false`` (evaluated, never trained: the upstream
domain of a run that continues from ``model.checkpoint``; replay still draws from its training
tokens), or
any of the per-domain keys in ``DOMAIN_KEYS`` (they override the scenario-wide defaults):

    domains:
      - english_web.txt
      - {path: spanish_rv1909.txt, subset_tokens: 200000, subset_epochs: 4}
      - {hf: wikitext, hf_config: wikitext-2-raw-v1, text_field: text}

Per experience: ``train_tokens`` is the token budget (windows of ``context`` tokens; 0 = one pass
over the training split). Guo et al. 2024 ("Efficient Continual Pre-training by Mitigating the
Stability Gap", arXiv 2406.14833) propose (1) several epochs on a properly sized subset:
``subset_tokens`` (a seeded random set of documents of about that many tokens) trained for
``subset_epochs`` epochs; (2) a high-quality sub-corpus: ``quality_score`` ranks the training
documents (``model``: mean token loss under ``quality_model``, e.g. the initial model's
checkpoint; or ``package.module:function`` mapping a list of texts to scores; lower = better)
and ``quality_keep`` keeps the best-scored fraction of the tokens. Both apply to experiences with
index >= ``subset_from`` / ``quality_from`` (default 1: the continued domains, not the
pre-training one) unless a domain's own mapping sets them.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np
import torch

from cl.config import ScenarioConfig
from cl.data import Experience, Scenario
from cl.errors import ConfigError, DataError, did_you_mean
from cl.registry import SCENARIOS
from cl.tokenizer import id_dtype, make_tokenizer
from cl.tokens import TokenData
from scenarios.text_sources import hf_documents, local_domain, split_documents, split_lines, synthetic_text

DOMAIN_KEYS = ("path", "hf", "synthetic", "lines", "name", "train", "hf_config", "split", "eval_split", "text_field",
               "glob",
               "doc_separator", "train_tokens", "eval_tokens", "subset_tokens", "subset_epochs", "quality_keep")


@dataclass
class TextDomainsConfig(ScenarioConfig):
    name: str = "text_domains"
    domains: List[Any] = field(default_factory=list)  # file | folder | "hf:NAME" | mapping of DOMAIN_KEYS
    root: str = ""                    # folder that relative domain paths are joined to
    context: int = 128                # tokens per window (model input length)
    tokenizer: str = "byte"           # byte | bpe | path/to/tokenizer.json | Hugging Face name or folder
    vocab_size: int = 4096            # bpe: ids, including <|endoftext|>
    bpe_path: str = ""                # bpe: tokenizer.json written after training, loaded when it exists
    bpe_domains: int = 0              # bpe: train it on the first N domains' training text (0: all)
    holdout: float = 0.05             # held-out fraction per domain (last lines; shared/data/text README: 5%)
    train_tokens: int = 0             # token budget per experience (0: one pass over the training split)
    eval_tokens: int = 0              # held-out tokens evaluated per domain (0: all)
    doc_separator: str = ""           # regex ending each document ('' : one document per line)
    glob: str = "*"                   # folder domains: files read (recursively, sorted)
    subset_tokens: int = 0            # Guo et al. (1): train on ~this many tokens of random documents ...
    subset_epochs: int = 1            # ... for this many epochs
    subset_from: int = 1              # experiences with index >= this get the subset (0: all)
    quality_score: str = ""           # Guo et al. (2): '' (off) | model | package.module:function
    quality_keep: float = 1.0         # fraction of training tokens kept, best (lowest) scores first
    quality_from: int = 1             # experiences with index >= this are filtered
    quality_model: Dict[str, Any] = field(default_factory=dict)  # model: {name, args, checkpoint}
    text_field: str = "text"          # hf: field of each record
    split: str = "train"              # hf: split streamed for training
    streaming: bool = True            # hf: stream (no full download)
    split_seed: int = 0               # seed of the document subsets (fixed across runs)


def domain_specs(cfg):
    """Each domain as a dict of its settings (scenario-wide defaults + its own keys), validated."""
    if not cfg.domains:
        raise ConfigError("scenario.domains is empty: list text files, folders or 'hf:NAME' entries, e.g. "
                          "domains: [english_web.txt, spanish_rv1909.txt] with root: ../shared/data/text.")
    specs = []
    for i, entry in enumerate(cfg.domains):
        own = dict(entry) if isinstance(entry, dict) else ({"hf": str(entry)[3:]} if str(entry).startswith("hf:")
                                                           else {"path": str(entry)})
        sources = [k for k in ("path", "hf", "synthetic") if k in own]
        for k in own:
            if k not in DOMAIN_KEYS:
                raise ConfigError(f"scenario.domains[{i}] has an unknown key '{k}'{did_you_mean(k, DOMAIN_KEYS)}. "
                                  f"Valid keys: {', '.join(DOMAIN_KEYS)}.")
        if len(sources) != 1:
            raise ConfigError(f"scenario.domains[{i}] needs exactly one of 'path', 'hf' and 'synthetic' (a seed: "
                              "generated stand-in text for tests), got {sources or 'none'}.")
        spec = {k: getattr(cfg, k) for k in ("train_tokens", "eval_tokens", "doc_separator", "glob", "text_field",
                                             "split")}
        spec.update({"subset_tokens": cfg.subset_tokens if i >= cfg.subset_from else 0,
                     "subset_epochs": cfg.subset_epochs if i >= cfg.subset_from else 1,
                     "quality_keep": cfg.quality_keep if i >= cfg.quality_from else 1.0,
                     "hf_config": None, "eval_split": ""})
        spec.update(own)
        if "path" in spec:
            paths = [str(p) for p in spec["path"]] if isinstance(spec["path"], (list, tuple)) else [str(spec["path"])]
            paths = [os.path.join(cfg.root, p) if cfg.root and not os.path.isabs(p) else p for p in paths]
            spec["path"] = paths if len(paths) > 1 else paths[0]
            if len(paths) > 1 and "name" not in spec:
                raise ConfigError(f"scenario.domains[{i}] joins several paths: give it a 'name'.")
            base = os.path.basename(os.path.normpath(paths[0]))
            spec.setdefault("name", os.path.splitext(base)[0] if os.path.isfile(paths[0]) else base)
        elif "hf" in spec:
            spec.setdefault("name", str(spec["hf"]).rstrip("/").split("/")[-1])
        else:
            spec.setdefault("name", f"synthetic{spec['synthetic']}")
        check_budget(spec, cfg.context)
        specs.append(spec)
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"Two domains share a name ({names}); give each mapping its own 'name'.")
    return specs


def check_budget(spec, context):
    n, ep, keep = spec["subset_tokens"], spec["subset_epochs"], spec["quality_keep"]
    if spec["train_tokens"] < 0 or n < 0 or ep < 1 or not 0 < keep <= 1:
        raise ConfigError(f"Domain '{spec['name']}': need train_tokens >= 0, subset_tokens >= 0, subset_epochs >= 1 "
                          f"and 0 < quality_keep <= 1 (got {spec['train_tokens']}, {n}, {ep}, {keep}).")
    if n and spec["train_tokens"] and spec["train_tokens"] != n * ep:
        raise ConfigError(f"Domain '{spec['name']}': train_tokens={spec['train_tokens']} but the subset gives "
                          f"subset_tokens x subset_epochs = {n} x {ep} = {n * ep} tokens. Make them equal (same "
                          "compute, Guo et al.) or set only one of them.")
    if 0 < n < context + 1:
        raise ConfigError(f"Domain '{spec['name']}': subset_tokens={n} is less than one window (context + 1).")


def read_domains(specs, cfg, tokenizer=None):
    """{name: (train docs, held-out docs, where)}; Hugging Face domains need the tokenizer (budget)."""
    out = {}
    for s in specs:
        if "path" in s:
            train, held = [], []
            for path in (s["path"] if isinstance(s["path"], list) else [s["path"]]):
                tr, he, _ = local_domain(path, cfg.holdout, s["doc_separator"], s["glob"])   # each file split alone
                train, held = train + tr, held + he
            out[s["name"]] = (train, held, " + ".join(s["path"]) if isinstance(s["path"], list) else s["path"])
        elif "synthetic" in s:
            where = f"synthetic:{s['synthetic']}"
            train, held = split_lines(synthetic_text(s["synthetic"], s.get("lines", 2000)), cfg.holdout, where)
            out[s["name"]] = (split_documents(train, s["doc_separator"]), [held], where)
        elif tokenizer is not None:
            out[s["name"]] = hf_domain(s, cfg, tokenizer) + (f"hf:{s['hf']}",)
    return out


def hf_domain(s, cfg, tokenizer):
    need = s["train_tokens"] or s["subset_tokens"]
    if not need and cfg.streaming:
        raise ConfigError(f"The Hugging Face domain '{s['name']}' is streamed: set its train_tokens (or "
                          "scenario.train_tokens) so reading knows when to stop, or scenario.streaming=false.")
    counted = {"train": 0, "eval": 0, "n_train": 0, "n_eval": 0}

    def enough(train, held):
        for key, docs in (("train", train), ("eval", held)):
            new = docs[counted["n_" + key]:]
            counted[key] += sum(len(a) for a in tokenizer.encode_batch(new))
            counted["n_" + key] = len(docs)
        return counted["train"] >= need and counted["eval"] >= max(s["eval_tokens"], cfg.context + 1)

    return hf_documents(s["hf"], config=s["hf_config"], split=s["split"], eval_split=s["eval_split"],
                        text_field=s["text_field"], holdout=cfg.holdout, streaming=cfg.streaming,
                        enough=enough if need else None)


def build_tokenizer(cfg, texts):
    """The scenario's tokenizer; a BPE trains on the first ``bpe_domains`` local domains' training text."""
    def train_texts():
        names = list(texts)[: cfg.bpe_domains or None]
        if not names:
            raise ConfigError("scenario.tokenizer=bpe trains on local text domains, and none is selected: list a "
                              "local file first, or give an existing bpe_path / tokenizer.json.")
        for n in names:
            docs = texts[n][0]
            for i in range(0, len(docs), 1000):
                yield "".join(docs[i:i + 1000])
    return make_tokenizer(cfg.tokenizer, train_texts=train_texts, vocab_size=cfg.vocab_size, path=cfg.bpe_path)


def encode(tokenizer, docs):
    """[token array per document]."""
    return tokenizer.encode_batch(docs)


def concat_ids(arrays, vocab_size):
    ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=id_dtype(vocab_size))
    return torch.from_numpy(ids.astype(id_dtype(vocab_size), copy=False))


def keep_best(ids, scores, fraction):
    """Indices of the best (lowest-score) documents holding ``fraction`` of the tokens, in text order."""
    lengths = np.array([len(a) for a in ids])
    order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
    budget = fraction * lengths.sum()
    kept = order[: max(1, int(np.searchsorted(np.cumsum(lengths[order]), budget, side="left")) + 1)]
    return np.sort(kept)


def random_subset(ids, n_tokens, seed):
    """Indices of a seeded random set of documents holding about ``n_tokens`` tokens, in text order."""
    lengths = np.array([len(a) for a in ids])
    order = np.random.default_rng(seed).permutation(len(ids))
    n = int(np.searchsorted(np.cumsum(lengths[order]), n_tokens, side="left")) + 1
    return np.sort(order[:n])


def score_documents(cfg, docs, ids, tokenizer):
    """Quality score per document (lower = better)."""
    spec = cfg.quality_score
    if spec == "model":
        from scenarios.text_quality import model_loss_scores
        return model_loss_scores(cfg.quality_model, ids, tokenizer.vocab_size, cfg.context)
    if ":" in spec:
        from cl.registry import _import_object
        fn = _import_object(spec, "quality score")
        scores = list(fn(list(docs)))
        if len(scores) != len(docs):
            raise ConfigError(f"The quality score {spec} returned {len(scores)} scores for {len(docs)} documents.")
        return scores
    raise ConfigError(f"scenario.quality_score must be '', 'model' or 'package.module:function', got '{spec}'.")


def domain_tokens(spec, docs_train, docs_eval, where, cfg, tokenizer, seed):
    """(train TokenData, eval TokenData, stats) of one domain."""
    V, ctx = tokenizer.vocab_size, cfg.context
    ids = encode(tokenizer, docs_train)
    stats = {"source": where, "documents": len(ids), "train_tokens_available": int(sum(len(a) for a in ids))}
    if spec["quality_keep"] < 1:
        if not cfg.quality_score:
            raise ConfigError(f"Domain '{spec['name']}' has quality_keep={spec['quality_keep']} but "
                              "scenario.quality_score is not set (model | package.module:function).")
        kept = keep_best(ids, score_documents(cfg, docs_train, ids, tokenizer), spec["quality_keep"])
        ids = [ids[i] for i in kept]
        stats["quality_kept_documents"] = len(ids)
    if spec["subset_tokens"]:
        ids = [ids[i] for i in random_subset(ids, spec["subset_tokens"], seed)]
        stats["subset_documents"] = len(ids)
    train = concat_ids(ids, V)
    held = concat_ids(encode(tokenizer, docs_eval), V)
    for part, toks in (("training", train), ("held-out", held)):
        if len(toks) < ctx + 1:
            raise DataError(f"{where} has {len(toks)} tokens in its {part} part, fewer than one window of "
                            f"context + 1 = {ctx + 1} tokens (tokenizer {tokenizer.name}). Use a longer text, a "
                            f"smaller scenario.context{', a larger scenario.holdout' if part == 'held-out' else ''}"
                            " or drop this domain.")
    if not spec.get("train", True):
        windows = 0                     # evaluated, never trained (e.g. the upstream domain of a continued run)
    elif spec["subset_tokens"]:
        windows = spec["subset_epochs"] * (len(train) // ctx)
    else:
        windows = spec["train_tokens"] // ctx if spec["train_tokens"] else (len(train) - 1) // ctx
    if windows < 1 and spec.get("train", True):
        raise ConfigError(f"Domain '{spec['name']}': train_tokens={spec['train_tokens']} is less than one window of "
                          f"{ctx} tokens.")
    n_eval = (len(held) - 1) // ctx
    if spec["eval_tokens"]:
        n_eval = max(1, min(n_eval, spec["eval_tokens"] // ctx))
    stats.update(train_tokens_used=int(len(train)), budget_tokens=windows * ctx, eval_tokens=n_eval * ctx)
    train = TokenData(train, ctx, num_windows=windows, vocab_size=V, name=spec["name"])
    train.eval_only = not spec.get("train", True)
    return train, TokenData(held, ctx, num_windows=n_eval, vocab_size=V, name=spec["name"]), stats


@SCENARIOS.register("text_domains", config=TextDomainsConfig)
def text_domains(cfg, seed=0):
    """Language-model continual pre-training: one experience per text domain, loss/perplexity matrix."""
    if cfg.context < 1 or not 0 < cfg.holdout < 1:
        raise ConfigError(f"scenario.context must be >= 1 and 0 < scenario.holdout < 1 (got {cfg.context}, "
                          f"{cfg.holdout}).")
    specs = domain_specs(cfg)
    texts = read_domains(specs, cfg)
    tokenizer = build_tokenizer(cfg, texts)
    texts.update(read_domains([s for s in specs if "hf" in s], cfg, tokenizer))
    texts = {s["name"]: texts[s["name"]] for s in specs}
    exps, stats = [], {}
    for i, s in enumerate(specs):
        train_docs, held_docs, where = texts[s["name"]]
        train, test, stats[s["name"]] = domain_tokens(s, train_docs, held_docs, where, cfg, tokenizer,
                                                      cfg.split_seed + 1009 * i)
        exps.append(Experience(index=i, train=train, test=test, classes=list(range(tokenizer.vocab_size)),
                               domain=s["name"]))
    scenario = Scenario(name="text_domains", experiences=exps, num_classes=tokenizer.vocab_size,
                        input_shape=(cfg.context,), domains=[s["name"] for s in specs], metric="loss")
    scenario.tokenizer = tokenizer
    scenario.stats = stats
    return scenario
