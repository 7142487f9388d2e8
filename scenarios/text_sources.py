"""Reading text domains: local files and folders, or Hugging Face ``datasets`` by name.

A domain is read as two lists of documents (strings whose concatenation is the text):
training and held-out. Local text is split by lines: the last ``holdout`` fraction of the lines
is held out (the split ``shared/data/text/README.md`` prescribes: the last 5%), then the
training part is cut into documents (lines, or pieces ending at a ``doc_separator`` regex).
Hugging Face datasets are streamed record by record: every ``round(1/holdout)``-th record is
held out (or the records of ``eval_split``), and reading stops once the training part holds the
tokens the experience needs.
"""
import glob as _glob
import os
import re

from cl.errors import ConfigError, DataError


def read_text(path):
    """A file's text; an empty or non-UTF-8 file is a DataError naming it and the fix."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"Cannot read the text file {path}: {e.strerror}. Check scenario.domains "
                        "(and scenario.root, which relative paths are joined to).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}). Convert it, e.g. "
                        f"`iconv -f latin1 -t utf-8 {os.path.basename(path)}`, or remove it from scenario.domains."
                        ) from None
    if not text.strip():
        raise DataError(f"{path} is empty: a text domain needs text (at least two context windows, one for "
                        "training and one held out). Remove it from scenario.domains or fill it.")
    return text


def folder_files(folder, pattern):
    """Files under ``folder`` matching ``pattern`` (recursively, sorted, hidden ones skipped)."""
    files = sorted(p for p in _glob.glob(os.path.join(folder, "**", pattern), recursive=True)
                   if os.path.isfile(p) and not any(part.startswith(".") for part in
                                                    os.path.relpath(p, folder).split(os.sep)))
    if not files:
        raise DataError(f"The folder {folder} has no files matching '{pattern}'. Set the domain's glob "
                        "(e.g. {path: FOLDER, glob: '*.txt'}) or point at a file.")
    return files


def split_documents(text, separator=""):
    """Documents whose concatenation is ``text``: lines (``separator=''``), or pieces that end
    with each match of the regex ``separator`` (e.g. ``'\\n\\n+'``; ``'\\n(?=# ---- )'``)."""
    if not separator:
        return text.splitlines(keepends=True)
    cuts = [m.end() for m in re.finditer(separator, text) if m.end() > m.start()]
    bounds = [0] + cuts + [len(text)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def local_domain(path, holdout, separator="", pattern="*"):
    """(train documents, held-out documents, files) of a file or folder."""
    if os.path.isdir(path):
        files = folder_files(path, pattern)
        texts = [read_text(f) for f in files]
        text = "".join(t if t.endswith("\n") else t + "\n" for t in texts)
    elif os.path.isfile(path):
        files, text = [path], read_text(path)
    else:
        raise DataError(f"Text domain not found: {os.path.abspath(path)}. Give a file or folder in scenario.domains "
                        "(relative paths are joined to scenario.root), or 'hf:NAME' for a Hugging Face dataset.")
    train_text, eval_text = split_lines(text, holdout, path)
    return split_documents(train_text, separator), [eval_text], files


def synthetic_text(seed, lines=2000):
    """Seeded pseudo-text for tests and smoke runs (a stand-in, not language): each seed has its own
    20 'words' over its own 8 letters, drawn with Zipf-like frequencies, 6-12 words a line."""
    import numpy as np
    rng = np.random.default_rng(1000 + int(seed))
    letters = rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 8, replace=False)
    words = ["".join(rng.choice(letters, rng.integers(2, 7))) for _ in range(20)]
    p = 1.0 / np.arange(1, 21)
    p /= p.sum()
    return "".join(" ".join(rng.choice(words, rng.integers(6, 13), p=p)) + ".\n" for _ in range(lines))


def split_lines(text, holdout, where):
    """(training text, held-out text): the last ``holdout`` fraction of the lines is held out."""
    lines = text.splitlines(keepends=True)
    n_eval = max(1, int(round(len(lines) * holdout)))
    if len(lines) - n_eval < 1:
        raise DataError(f"{where} has {len(lines)} line(s): too few to hold out the last {holdout:.0%} for evaluation "
                        "and train on the rest. Use a longer text or a smaller scenario.holdout.")
    return "".join(lines[:-n_eval]), "".join(lines[-n_eval:])


def hf_documents(name, *, config=None, split="train", eval_split="", text_field="text", holdout=0.05,
                 streaming=True, enough=None, chunk=256):
    """(train documents, held-out documents) streamed from a Hugging Face dataset.

    enough: ``(train_docs, eval_docs) -> bool``, asked after every ``chunk`` records; reading
    stops when it says True (the token budget is reached) or the dataset ends.
    """
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"The Hugging Face dataset '{name}' needs the 'datasets' package: pip install datasets "
                          "(or pip install cl-platform[lm]); local text files need nothing.") from None

    def load(which):
        try:
            return datasets.load_dataset(name, config or None, split=which, streaming=streaming)
        except Exception as e:
            local = os.path.exists(name)
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if local:
                raise DataError(f"Cannot read the local dataset {name} (split '{which}'): {msg}.") from None
            raise DataError(
                f"Cannot load the Hugging Face dataset '{name}' (split '{which}'): {msg}. A hub name needs a "
                "download: run with internet once (it is then cached), or point the domain at local files "
                "instead ({path: FILE_OR_FOLDER}, or hf: a local folder of .jsonl/.parquet/.txt files).") from None

    def texts(ds):
        for i, rec in enumerate(ds):
            if text_field not in rec:
                raise DataError(f"Records of the dataset '{name}' have no field '{text_field}' (fields: "
                                f"{', '.join(rec)}). Set the domain's text_field.")
            yield i, rec[text_field] or ""

    train, held = [], []
    every = max(2, int(round(1 / holdout))) if holdout > 0 else 0
    if eval_split:
        held = [t for _, t in texts(load(eval_split))]
    for i, t in texts(load(split)):
        (held if not eval_split and every and i % every == every - 1 else train).append(t)
        if enough is not None and (i + 1) % chunk == 0 and enough(train, held):
            break
    if not "".join(train).strip():
        raise DataError(f"The dataset '{name}' (split '{split}', field '{text_field}') has no text.")
    return train, held
