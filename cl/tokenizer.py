"""Tokenizers for text scenarios: text -> token ids, with a vocabulary size.

- ``byte`` (default): UTF-8 bytes, 256 ids. No download, no training, any language.
- ``bpe``: a byte-level BPE trained here with the ``tokenizers`` library on the scenario's
  training text (GPT-2's scheme: every byte is in the base alphabet, so any text encodes). Saved
  to / loaded from a ``tokenizer.json`` file so that a continued run uses the very tokenizer of
  the run it continues.
- a path to a ``tokenizer.json`` file (``tokenizers`` format), or a Hugging Face tokenizer by
  name or local folder (``transformers.AutoTokenizer``; the name form needs a download once).

``tokenizers`` and ``transformers`` are optional (``pip install cl-platform[lm]``) and imported
only by the tokenizers that need them. Every tokenizer has ``name``, ``vocab_size``,
``encode_batch(texts) -> [np.ndarray]`` and ``decode(ids) -> str``.
"""
import os
from typing import Callable, Iterable, List, Optional

import numpy as np

from cl.errors import ConfigError

EOT = "<|endoftext|>"       # the BPE's one special token (GPT-2's name), kept out of normal text


def _require(module, what):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"{what} needs the '{module}' package: pip install {module} "
                          "(or pip install cl-platform[lm]); scenario.tokenizer=byte needs nothing.") from None


def id_dtype(vocab_size):
    """The smallest array dtype for ids below ``vocab_size`` that torch indexes (uint8 or int32)."""
    return np.uint8 if vocab_size <= 256 else np.int32


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to download or train."""

    name = "byte"
    vocab_size = 256

    def encode_batch(self, texts: Iterable[str]) -> List[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids):
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class BPETokenizer:
    """A ``tokenizers.Tokenizer`` (byte-level BPE trained here, or loaded from tokenizer.json)."""

    def __init__(self, tokenizer, name="bpe"):
        self.tok, self.name = tokenizer, name
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size=4096, min_frequency=2):
        """Train a byte-level BPE (GPT-2 pre-tokenization) with ``vocab_size`` ids, one of which
        is the end-of-text token."""
        tk = _require("tokenizers", "scenario.tokenizer=bpe")
        if vocab_size <= 257:
            raise ConfigError(f"scenario.vocab_size must exceed 257 for a BPE (256 bytes + {EOT}), got {vocab_size}.")
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                         special_tokens=[EOT])
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, name=f"bpe{vocab_size}")

    @classmethod
    def load(cls, path):
        tk = _require("tokenizers", f"the tokenizer file {path}")
        try:
            return cls(tk.Tokenizer.from_file(path), name=os.path.basename(path))
        except Exception as e:
            raise ConfigError(f"Cannot read the tokenizer file {path}: {e}. It must be a tokenizer.json written "
                              "by the `tokenizers` library (Tokenizer.save).") from None

    def save(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.tok.save(path)

    def encode_batch(self, texts):
        return [np.asarray(e.ids, dtype=id_dtype(self.vocab_size))
                for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids])


class HFTokenizer:
    """A Hugging Face tokenizer (``transformers.AutoTokenizer``) by hub name or local folder."""

    def __init__(self, name_or_path):
        transformers = _require("transformers", f"the Hugging Face tokenizer '{name_or_path}'")
        local = os.path.isdir(name_or_path)
        try:
            self.tok = transformers.AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
        except Exception as e:
            if local:
                raise ConfigError(f"Cannot load a tokenizer from the folder {name_or_path}: {type(e).__name__}: "
                                  f"{e}. It needs tokenizer.json or the files save_pretrained writes.") from None
            raise ConfigError(
                f"Cannot load the Hugging Face tokenizer '{name_or_path}' ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). A hub name needs a download: run once with "
                "internet (it is then cached), or save it elsewhere with "
                "AutoTokenizer.from_pretrained(name).save_pretrained(FOLDER) and set scenario.tokenizer=FOLDER; "
                "scenario.tokenizer=byte or bpe works offline.") from None
        self.name = name_or_path
        self.vocab_size = len(self.tok)

    def encode_batch(self, texts):
        texts = list(texts)
        if not texts:
            return []
        out = self.tok(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        return [np.asarray(ids, dtype=id_dtype(self.vocab_size)) for ids in out]

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids])


def make_tokenizer(spec="byte", *, train_texts: Optional[Callable[[], Iterable[str]]] = None,
                   vocab_size=4096, path=""):
    """The tokenizer named by ``spec``.

    spec: ``byte`` | ``bpe`` | path to a tokenizer.json | Hugging Face name or folder.
    train_texts: for ``bpe``, a function returning the training texts (called only to train).
    vocab_size: for ``bpe``. path: for ``bpe``, where the trained tokenizer is saved; when the
    file exists it is loaded instead of training (so later runs share it).
    """
    spec = str(spec)
    if spec == "byte":
        return ByteTokenizer()
    if spec == "bpe":
        if path and os.path.isfile(path):
            tok = BPETokenizer.load(path)
            if tok.vocab_size != vocab_size:
                raise ConfigError(f"The BPE tokenizer in {path} has {tok.vocab_size} ids but scenario.vocab_size is "
                                  f"{vocab_size}. Delete the file to train a new one, or set scenario.vocab_size="
                                  f"{tok.vocab_size}.")
            return tok
        if train_texts is None:
            raise ConfigError("scenario.tokenizer=bpe needs training text.")
        tok = BPETokenizer.train(train_texts(), vocab_size=vocab_size)
        if path:
            tok.save(path)
        return tok
    if spec.endswith(".json") and os.path.isfile(spec):
        return BPETokenizer.load(spec)
    if spec.endswith(".json"):
        raise ConfigError(f"Tokenizer file not found: {spec}. Give an existing tokenizer.json, or "
                          "scenario.tokenizer=byte | bpe | a Hugging Face name or folder.")
    return HFTokenizer(spec)
