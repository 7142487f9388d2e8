"""Tokenizers: byte-level (no dependency), a BPE trained here, a Hugging Face tokenizer from a folder the
test writes, and the errors for a missing file or an unknown hub name offline."""
import numpy as np
import pytest

from cl.errors import ConfigError
from cl.tokenizer import ByteTokenizer, make_tokenizer

TEXT = ["the cat sat on the mat. " * 20, "el gato se sentó en la alfombra. " * 20, "der Hund läuft über die Straße. " * 20]


def test_byte_tokenizer_is_utf8_bytes_and_roundtrips():
    tok = make_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 256
    (ids,) = tok.encode_batch(["Straße"])
    assert ids.dtype == np.uint8 and ids.tolist() == list("Straße".encode("utf-8")) and len(ids) == 7
    assert tok.decode(ids) == "Straße"


def test_bpe_trained_here_compresses_roundtrips_and_is_reloaded_from_its_file(tmp_path):
    pytest.importorskip("tokenizers")
    path = str(tmp_path / "bpe.json")
    calls = []

    def texts():
        calls.append(1)
        return iter(TEXT)

    tok = make_tokenizer("bpe", train_texts=texts, vocab_size=300, path=path)
    assert tok.vocab_size == 300 and calls == [1]
    ids = tok.encode_batch(TEXT)
    assert all(len(i) < len(t.encode()) / 2 for i, t in zip(ids, TEXT))     # merges learned
    assert ids[0].dtype == np.int32 and int(max(i.max() for i in ids)) < 300
    assert [tok.decode(i) for i in ids] == TEXT
    assert tok.decode(tok.encode_batch(["日本語 ✓"])[0]) == "日本語 ✓"       # byte-level: any text encodes
    again = make_tokenizer("bpe", train_texts=texts, vocab_size=300, path=path)
    assert calls == [1] and [a.tolist() for a in again.encode_batch(TEXT)] == [a.tolist() for a in ids]
    with pytest.raises(ConfigError, match="vocab_size"):
        make_tokenizer("bpe", train_texts=texts, vocab_size=512, path=path)
    assert make_tokenizer(path).vocab_size == 300                            # a tokenizer.json by path


def test_hugging_face_tokenizer_from_a_local_folder(tmp_path):
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    bpe = make_tokenizer("bpe", train_texts=lambda: iter(TEXT), vocab_size=280)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe.tok, eos_token="<|endoftext|>")
    fast.save_pretrained(str(tmp_path / "tok"))
    tok = make_tokenizer(str(tmp_path / "tok"))
    assert tok.vocab_size == 280
    assert [a.tolist() for a in tok.encode_batch(TEXT)] == [a.tolist() for a in bpe.encode_batch(TEXT)]
    assert tok.decode(tok.encode_batch([TEXT[2]])[0]) == TEXT[2]


def test_missing_file_and_unknown_hub_name_offline_say_what_to_do(monkeypatch):
    with pytest.raises(ConfigError, match="not found"):
        make_tokenizer("no/such/tokenizer.json")
    pytest.importorskip("transformers")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="needs a download"):
        make_tokenizer("nobody-here/no-such-tokenizer")
