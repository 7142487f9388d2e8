"""Experience Replay (ER) with a reservoir buffer.

Paper: Chaudhry, Rohrbach, Elhoseiny, Ajanthan, Dokania, Torr, Ranzato, "On Tiny Episodic
Memories in Continual Learning", arXiv 1902.10486 (2019).

Every step, a batch drawn uniformly (without replacement) from the buffer is concatenated with
the current batch and one cross-entropy step is taken on the joint batch. After the step the
current batch (non-augmented) is offered to the buffer by reservoir sampling. Buffer samples are
augmented on retrieval with the scenario's training augmentation, as in Mammoth (``models/er.py``).

Only ``after_step`` is needed, so ER works with hidden task boundaries (``hide_boundaries=true``).
``buffer_update=experience`` instead offers each distinct example of an experience once, at its
end, as Avalanche's ReplayPlugin does (used to compare the two libraries on the same experiment).
"""
from dataclasses import dataclass

import torch

from cl.buffer import buffer_from_config
from cl.config import StrategyConfig
from cl.errors import ConfigError
from cl.multilabel import classification_loss
from cl.registry import STRATEGIES
from cl.strategy import Strategy


@dataclass
class ERConfig(StrategyConfig):
    name: str = "er"
    lr: float = 0.1                 # Mammoth best args, seq-cifar10, buffers 200/500/5120
    batch_size: int = 32            # Mammoth seq-cifar10 (the ER paper's own runs use 10)
    minibatch_size: int = 32        # buffer batch per step; Mammoth best args 2023 (the paper: = batch size)
    buffer_size: int = 500          # DER paper tables report 200 / 500 / 5120
    buffer_policy: str = "reservoir"  # reservoir | class_balanced
    store_uint8: bool = True        # store [0, 1] images as uint8 when lossless (4x less memory)
    # When the buffer sees the data: "step" = every training batch after its step (Chaudhry et al.;
    # Mammoth, which re-offers each example every epoch); "experience" = each distinct example of
    # the experience once, at its end (Avalanche's ReplayPlugin: no replay during the first
    # experience; needs experience boundaries).
    buffer_update: str = "step"


@STRATEGIES.register("er")
class ER(Strategy):
    """Experience Replay: the current batch plus a reservoir-buffer batch, one CE step."""
    distributed_ok = True           # the same steps on every rank; checked by tests/test_distributed.py

    Config = ERConfig
    label_types = ("single", "multi")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = buffer_from_config(self.cfg, self.device)
        self.transform = None
        self.update = getattr(self.cfg, "buffer_update", "step")
        if self.update not in ("step", "experience"):
            raise ConfigError(f"strategy.buffer_update must be 'step' or 'experience', got '{self.update}'.")
        if self.update == "experience":
            self.needs_boundaries = "buffer_update=experience fills the buffer at each experience end"

    def train_data(self, exp):
        """The experience's data without augmentation: raw inputs go to the buffer, and this
        strategy augments the current and the replayed batch itself (``augment``)."""
        self.transform = exp.train.transform
        return exp.train.with_transform(None)

    def augment(self, x):
        return self.transform(x, None) if self.transform is not None else x

    def replay_batch(self):
        """``minibatch_size`` buffer samples drawn uniformly, augmented: (x, y, stored logits or None)."""
        bx, by, bz, _ = self.buffer.sample(self.cfg.minibatch_size)
        return self.augment(bx), by, bz

    def loss(self, batch):
        x, y = self.augment(batch.x), batch.y
        if len(self.buffer):
            bx, by, _ = self.replay_batch()
            x, y = torch.cat([x, bx]), torch.cat([y, by])
        return classification_loss(self.model(x), y)     # CE, or BCE on multi-hot targets (replayed with
                                                         # the labels they had when stored)

    def after_step(self, batch):
        if self.update == "step":
            self.buffer.add(batch.x, batch.y)

    def after_experience(self, exp):
        if self.update == "experience":
            data = exp.train.with_transform(None)      # raw examples, as after_step stores them
            for b in data.batches(max(self.cfg.batch_size, 256), shuffle=True, device=self.device):
                self.buffer.add(b.x, b.y)

    def extra_state(self):
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state):
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])

    def results(self):
        return self.buffer.results()

