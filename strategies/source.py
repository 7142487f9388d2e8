"""Source: the pretrained model applied to the test stream without any adaptation.

The "Source" row of the test-time adaptation tables, e.g. D. Wang et al., "Tent: Fully
Test-Time Adaptation by Entropy Minimization", ICLR 2021 (arXiv:2006.10726), Table 2, and
Q. Wang et al., "Continual Test-Time Domain Adaptation", CVPR 2022 (arXiv:2203.13591), Table 2.
The model runs in eval mode (BatchNorm uses its training-set running statistics).
"""
from dataclasses import dataclass

from cl.config import StrategyConfig
from cl.registry import STRATEGIES
from cl.strategy import Strategy


@dataclass
class SourceConfig(StrategyConfig):
    name: str = "source"
    batch_size: int = 200            # CoTTA/Tent CIFAR configs (cfgs/*.yaml: TEST.BATCH_SIZE 200)
    eval_batch_size: int = 200


@STRATEGIES.register("source")
class Source(Strategy):
    """No adaptation: eval-mode predictions of the source model (the TTA lower bound)."""

    protocols = ("online",)

    Config = SourceConfig

    def configure_model(self):
        self.model.eval()
        self.model.requires_grad_(False)

    def parameters_to_train(self):
        return []
