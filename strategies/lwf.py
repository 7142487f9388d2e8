"""Learning without Forgetting (LwF).

Paper: Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017, arXiv 1606.09282.

    L = CE(f(x), y) + alpha * KL(softmax(t(x)[:, old] / T) || softmax(f(x)[:, old] / T))

The teacher is a frozen copy of the model (eval mode) taken at the end of each experience; its
outputs on the current batch's **clean** images (before augmentation), restricted to the classes
of earlier experiences, are the soft targets, softened with temperature T = 2 (paper). The student
sees the augmented images. This is Mammoth's ``models/lwf.py``: ``begin_task`` computes the
teacher logits once per task from ``__getitem__(j)[2]``, the not-augmented image, with the net in
eval mode, and ``observe`` reads them with the augmented batch. To that end ``train_data`` hands
the runner the un-augmented data and ``loss`` augments the student's copy itself (as ER does).

The KL form equals the paper's cross-entropy ``-sum y'_o log yhat'_o`` minus the teacher's
entropy, a constant for the student: the gradients are the same, and the term is exactly zero
when the model equals its snapshot.
The KL is summed over old classes and averaged over the batch (no T^2 factor, as in the paper,
Mammoth and Avalanche). The cross-entropy is over all outputs (single head, as in Avalanche;
Mammoth restricts it to the classes seen so far, which leaves the unseen outputs untrained and
hurts class-IL evaluation by argmax over all outputs).

Defaults (Mammoth ``best_args`` for seq-cifar10, the code of the DER paper's LwF rows: first
commit 7ab9db9, ``utils/best_args.py`` lines 491-496): lr 0.01, alpha 3.0 (the paper's lambda_o is
1), T 2.0, batch 32, plain SGD, and ``wd_reg`` 5e-4 added to the *loss* as
``wd_reg * sum(w ** 2)`` (``models/lwf.py`` line 93). Its gradient is ``2 * wd_reg * w``, so it
equals SGD weight decay ``2 * 5e-4 = 1e-3``: our default ``weight_decay``. (Mammoth since the
X-DER commit 0d727a7, Jan 2022, drops the loss term and sets ``optim_wd`` 5e-4, SGD weight decay
5e-4, half the regularisation; the DER paper's numbers predate it.) Not implemented: the paper's /
Mammoth's warm-up that first trains only the new head.

Boundaries: LwF needs the experience end to snapshot the teacher and to know which classes are
old (``needs_boundaries``): a run with ``hide_boundaries=true`` stops before training.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cl.config import StrategyConfig
from cl.registry import STRATEGIES
from cl.strategy import Strategy
from cl.tokens import token_cross_entropy


@dataclass
class LwFConfig(StrategyConfig):
    name: str = "lwf"
    lr: float = 0.01                # Mammoth best args, seq-cifar10
    weight_decay: float = 0.001     # = Mammoth's wd_reg 5e-4 in the loss (gradient 2 * 5e-4 * w), see above
    alpha: float = 3.0              # distillation weight; Mammoth seq-cifar10 (paper lambda_o = 1)
    temperature: float = 2.0        # paper, Sec. 3


def distillation_loss(student_logits, teacher_logits, classes, temperature):
    """Batch-mean KL(softmax(teacher/T) || softmax(student/T)) over the columns ``classes``."""
    if len(classes) != student_logits.shape[1]:      # all columns (e.g. a vocabulary): no gather
        cols = torch.as_tensor(classes, device=student_logits.device)
        student_logits, teacher_logits = student_logits[:, cols], teacher_logits[:, cols]
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(1).mean()


@STRATEGIES.register("lwf")
class LwF(Strategy):
    """Learning without Forgetting: CE on new data + KD to the previous model on old classes."""
    distributed_ok = True           # the same steps on every rank; checked by tests/test_distributed.py

    Config = LwFConfig
    needs_boundaries = "the teacher is taken at each experience end"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = None
        self.old_classes = []         # classes of finished experiences (the teacher's)
        self.transform = None         # the experience's augmentation, applied in ``loss``

    def train_data(self, exp):
        """The experience's data without augmentation; ``loss`` augments the student's copy only."""
        self.transform = exp.train.transform
        return exp.train.with_transform(None)

    def loss(self, batch):
        """CE on the augmented batch + alpha * KD to the teacher's outputs on the clean batch."""
        x = self.transform(batch.x, None) if self.transform is not None else batch.x
        out = self.model(x)
        loss = token_cross_entropy(out, batch.y)
        if self.teacher is not None and self.old_classes and self.cfg.alpha:
            with torch.no_grad():
                target = self.teacher(batch.x)          # the clean images, as Mammoth's teacher
            if out.dim() == 3:        # token windows: distil every position's next-token distribution
                out, target = out.reshape(-1, out.shape[-1]), target.reshape(-1, target.shape[-1])
            loss = loss + self.cfg.alpha * distillation_loss(out, target, self.old_classes, self.cfg.temperature)
        return loss

    def after_experience(self, exp):
        self.old_classes = sorted(set(self.old_classes) | set(exp.classes))
        self.teacher = self._frozen_copy()

    def _frozen_copy(self):
        teacher = copy.deepcopy(self.model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def extra_state(self):
        state = {"old_classes": list(self.old_classes)}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_extra_state(self, state):
        self.old_classes = list(state.get("old_classes", []))
        self.teacher = None
        if "teacher" in state:
            self.teacher = self._frozen_copy()
            self.teacher.load_state_dict(state["teacher"])
