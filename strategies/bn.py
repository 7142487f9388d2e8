"""BN adaptation ("BN-1", test-batch normalization statistics).

S. Schneider et al., "Improving robustness against common corruptions by covariate shift
adaptation", NeurIPS 2020 (arXiv:2006.16971); Z. Nado et al., "Evaluating Prediction-Time Batch
Normalization for Robustness under Covariate Shift", 2020 (arXiv:2006.10963). Every BatchNorm
layer normalizes with the mean and (biased) variance of the current test batch; no running
statistics are kept or updated and no parameter is trained. This is the "BN Stats Adapt" /
"norm" row of the Tent and CoTTA tables (Tent repo ``norm.py``; RMT benchmark ``bntest``).
"""
from dataclasses import dataclass

from cl.config import StrategyConfig
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from strategies.tta_base import use_batch_statistics


@dataclass
class BNConfig(StrategyConfig):
    name: str = "bn"
    batch_size: int = 200            # CoTTA/Tent CIFAR configs (cfgs/*/norm.yaml: TEST.BATCH_SIZE 200)
    eval_batch_size: int = 200       # predict() also normalizes with batch statistics


@STRATEGIES.register("bn")
class BNAdapt(Strategy):
    """Test-batch BatchNorm statistics (BN-1): normalize each layer with the current batch's stats."""

    protocols = ("online",)

    Config = BNConfig

    def configure_model(self):
        self.model.eval()
        self.model.requires_grad_(False)
        use_batch_statistics(self.model)   # eval() then still uses batch statistics

    def parameters_to_train(self):
        return []
