"""Weight ensemble: the running mean of a set of parameters, taken every N optimizer steps.

ZSCL (Zheng et al., ICCV 2023, §3.3 "weight ensemble"; code mtil/src/models/helpers.py ``merge_we``,
called from finetune.py every ``--avg_freq`` iterations): starting from the weights at the start of
a task (count 0), each ``update`` makes the ensemble the mean of the start weights and every
snapshot so far, ``mean <- (mean * n + w) / (n + 1)`` after ``n`` += 1. At the end of the task the
ensemble replaces the weights (``copy_to_parameters``). Any strategy can use it:

    we = WeightEnsemble(params)              # at the start of a task
    ... after the optimizer step:  if step % every == 0: we.update()
    we.copy_to_parameters()                  # at the end of the task
"""
import torch

__all__ = ["WeightEnsemble"]


class WeightEnsemble:
    """Running mean of ``params`` (a list of tensors, read at each ``update``), starting from their
    current values."""

    def __init__(self, params):
        self.params = list(params)
        self.mean = [p.detach().clone() for p in self.params]
        self.count = 0                   # snapshots averaged in besides the start weights

    @torch.no_grad()
    def update(self):
        """Add the parameters' current values to the mean."""
        self.count += 1
        for m, p in zip(self.mean, self.params):
            m.mul_(self.count).add_(p.detach()).div_(self.count + 1)

    @torch.no_grad()
    def copy_to_parameters(self):
        """Overwrite the parameters with the ensemble (in place, so optimizers keep their references)."""
        for m, p in zip(self.mean, self.params):
            p.copy_(m)

    def state_dict(self):
        return {"mean": [m.clone() for m in self.mean], "count": self.count}

    def load_state_dict(self, state):
        for m, s in zip(self.mean, state["mean"]):
            m.copy_(s)
        self.count = int(state["count"])
