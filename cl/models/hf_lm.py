"""Hugging Face causal language models (GPT-2, Pythia, Llama, ...) through the same runner.

``model.name=hf_causal_lm`` with ``model.args.name_or_path`` = a hub name (downloads once, then
cached) or a local folder written by ``save_pretrained`` loads the weights, so a user with
weights continues pre-training Pythia or GPT-2 with any strategy. ``model.args.config`` (a
mapping of a ``transformers`` config, with ``model_type``) builds a randomly initialised model
instead. ``transformers`` is an optional dependency (``pip install cl-platform[lm]``).

The wrapper returns plain logits [B, T, vocab] like ``gpt``; its state_dict keys start with
``lm.`` (what ``save_model`` writes and ``model.checkpoint`` reads back).
"""
import os

from torch import nn

from cl.errors import ConfigError
from cl.registry import MODELS


class CausalLMLogits(nn.Module):
    """A ``transformers`` causal LM whose forward returns the logits tensor."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.vocab_size = int(lm.get_output_embeddings().weight.shape[0])

    def forward(self, idx):
        return self.lm(input_ids=idx, use_cache=False).logits


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model hf_causal_lm needs the 'transformers' package: pip install transformers "
                          "(or pip install cl-platform[lm]); model.name=gpt needs nothing.") from None
    return transformers


@MODELS.register("hf_causal_lm")
def hf_causal_lm(num_classes, input_shape, name_or_path="", config=None, dtype="float32"):
    """A Hugging Face causal LM by hub name or local folder (weights loaded), or from a config mapping.

    num_classes: the tokenizer's vocabulary; the model's must be at least as large (models often
    pad it, e.g. Pythia's 50,304 for a 50,277-token tokenizer).
    """
    tf = _transformers()
    if bool(name_or_path) == bool(config):
        raise ConfigError("hf_causal_lm needs exactly one of model.args.name_or_path (hub name or local folder) "
                          "and model.args.config (a transformers config mapping with model_type).")
    if config:
        config = dict(config)
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise ConfigError("model.args.config needs a model_type (e.g. gpt2, gpt_neox, llama).")
        try:
            cfg = tf.AutoConfig.for_model(model_type, **config)
        except ValueError as e:
            raise ConfigError(f"model.args.config: {e}") from None
        lm = tf.AutoModelForCausalLM.from_config(cfg)
        loaded = False
    else:
        local = os.path.isdir(name_or_path)
        try:
            lm = tf.AutoModelForCausalLM.from_pretrained(name_or_path, local_files_only=local, dtype=dtype)
        except Exception as e:
            if local:
                raise ConfigError(f"Cannot load a causal LM from the folder {name_or_path}: {type(e).__name__}: {e}. "
                                  "It needs config.json and weights as written by save_pretrained.") from None
            raise ConfigError(
                f"Cannot load the Hugging Face model '{name_or_path}' ({type(e).__name__}). A hub name needs a "
                "download: run once with internet (it is then cached), or save it elsewhere with "
                "AutoModelForCausalLM.from_pretrained(name).save_pretrained(FOLDER) and set "
                "model.args.name_or_path=FOLDER.") from None
        loaded = True
    net = CausalLMLogits(lm)
    if net.vocab_size < num_classes:
        raise ConfigError(f"The model has {net.vocab_size} output tokens but the tokenizer has {num_classes}: "
                          "token ids "
                          "would fall outside its embedding. Use the model's own tokenizer (scenario.tokenizer="
                          "the same name or folder) or a config with a larger vocab_size.")
    n_pos = getattr(lm.config, "n_positions", None) or getattr(lm.config, "max_position_embeddings", None)
    if n_pos is not None and n_pos < input_shape[0]:
        raise ConfigError(f"The model takes at most {n_pos} positions but scenario.context is {input_shape[0]}.")
    net.loaded_pretrained = loaded
    net.checkpoint_hint = ("A causal LM checkpoint must come from the same model.args (name_or_path or config) "
                           "and the same tokenizer.")
    return net
