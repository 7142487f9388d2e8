"""Fine-tuning: plain SGD on each experience in turn (the lower bound of every CL table)."""
from cl.registry import STRATEGIES
from cl.strategy import Strategy


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    """Plain SGD on each experience in turn; no protection against forgetting (lower bound).
    Multi-label scenarios: BCE on every output, the other tasks' labels hidden (the MLCIL lower bound)."""

    label_types = ("single", "multi")
    distributed_ok = True           # the same steps on every rank; checked by tests/test_distributed.py
