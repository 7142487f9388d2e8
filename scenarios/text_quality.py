"""Document quality scores for the ``text_domains`` quality filter (Guo et al. 2024's second
strategy: continue pre-training on a high-quality sub-corpus).

``model_loss_scores``: each document's mean next-token loss under a given language model (e.g.
the initial model's checkpoint, as perplexity-based data selection does: lower loss = closer to
what the model was trained on = kept first).
"""
import numpy as np
import torch
import torch.nn.functional as F

from cl.config import ModelConfig
from cl.errors import ConfigError


@torch.no_grad()
def model_loss_scores(model_cfg, ids, vocab_size, context, batch_size=64):
    """Mean token loss of each document (its first ``context + 1`` tokens) under the model described
    by ``model_cfg`` ({name, args, checkpoint}); documents of fewer than 2 tokens score +inf."""
    from cl.models import build_model
    if not model_cfg or not model_cfg.get("checkpoint"):
        raise ConfigError("scenario.quality_score=model needs scenario.quality_model = {name: gpt, args: {...}, "
                          "checkpoint: PATH} (e.g. the model.pt of the pre-training run).")
    known = {"name", "args", "checkpoint"}
    if set(model_cfg) - known:
        raise ConfigError(f"scenario.quality_model takes {', '.join(sorted(known))}, got {', '.join(model_cfg)}.")
    net = build_model(ModelConfig(name=model_cfg.get("name", "gpt"), args=dict(model_cfg.get("args") or {}),
                                  checkpoint=model_cfg["checkpoint"]), vocab_size, (context,)).eval()
    scores = np.full(len(ids), np.inf)
    order = [i for i in range(len(ids)) if len(ids[i]) >= 2]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        seqs = [torch.as_tensor(ids[i][: context + 1].astype(np.int64)) for i in chunk]
        n = max(len(s) for s in seqs)
        w = torch.zeros(len(seqs), n, dtype=torch.long)
        mask = torch.zeros(len(seqs), n - 1)
        for r, s in enumerate(seqs):
            w[r, : len(s)] = s
            mask[r, : len(s) - 1] = 1
        logits = net(w[:, :-1]).float()
        loss = F.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none")
        scores[chunk] = ((loss * mask).sum(1) / mask.sum(1)).numpy()
    return scores
