"""LwF for CLIP, as ZSCL runs it on MTIL (Li & Hoiem, "Learning without Forgetting", TPAMI 2017;
ZSCL's Table 1 "LwF"; code Thunderbeee/ZSCL ``mtil/scripts/lwf.sh``).

lwf.sh is ZSCL's own loss with other references: ``--method ZSCL --image_loss --text_loss
--ref-dataset <current dataset> --ref-model <previous task's checkpoint>`` and no ``--ref-sentences``
(so the reference sentences are the current dataset's class prompts), no weight ensemble, no L2. So
this is ``zscl`` with ``ref_model: previous``, ``ref_images: current``, ``ref_texts: current``,
``weight_ensemble_every: 0``, ``l2: 0``: distillation towards the model at the start of the task on
the current task's images and class prompts.
"""
from dataclasses import dataclass

from cl.registry import STRATEGIES
from strategies.zscl import ZSCL, ZSCLConfig


@dataclass
class CLIPLwFConfig(ZSCLConfig):
    name: str = "clip_lwf"
    ref_model: str = "previous"       # lwf.sh --ref-model ckpt/<previous dataset>.pth
    ref_images: str = "current"       # lwf.sh --ref-dataset <current dataset>
    ref_texts: str = "current"        # no --ref-sentences: the ref dataset's class prompts
    weight_ensemble_every: int = 0    # lwf.sh: no --we
    l2: float = 0.0                   # lwf.sh: no --l2


@STRATEGIES.register("clip_lwf")
class CLIPLwF(ZSCL):
    """ZSCL's loss towards the previous task's model on the current task's images and class prompts (LwF)."""

    Config = CLIPLwFConfig
