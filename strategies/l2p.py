"""L2P: Learning to Prompt.

Paper: Z. Wang, Z. Zhang, C.-Y. Lee, H. Zhang, R. Sun, X. Ren, G. Su, V. Perot, J. Dy, T. Pfister,
"Learning to Prompt for Continual Learning", CVPR 2022 (arXiv 2112.08654). Authors' code:
google-research/l2p (JAX); PyTorch port JH-LEE-KR/l2p-pytorch.

A frozen pretrained ViT; a pool of ``pool_size`` prompts (each ``length`` tokens) with one key
each. The query is the [CLS] feature of the frozen, un-prompted ViT; the ``top_k`` prompts whose
keys are most cosine-similar to it are prepended to the patch tokens (prompt-tuning at the
input: [CLS], prompts, patches). The classifier reads the average of the prompt tokens' outputs
(the code's ``head_type='prompt'``). Loss: cross-entropy with the logits masked to the current
task's classes (``train_mask``) + ``pull_coeff`` * sum_k (1 - cos(query, key_k)) (the pull
constraint). Only prompts, keys and the head train. See strategies/_prompts.py for the query
cache and strategies/prompt_base.py for the hooks shared with the other prompt strategies.

Batch-wise selection (``batchwise_prompt``) gives every image of a batch the batch's most frequent
top-k prompts. The authors' code does it at evaluation too (l2p-pytorch prompt.py applies it in
every forward pass; the JAX code likewise, per device), over test batches of the training batch
size, 16: ``eval_batch_size`` defaults to 16 for that reason. Every evaluation batch holds images
of one task, so the vote uses the batch to pick the task's prompts: the larger the batch, the more
task identity leaks (the platform default of 256 leaked far more than the authors' 16).
``eval_batch_size=1`` evaluates with per-image selection.
"""
from dataclasses import dataclass

from strategies._prompts import PromptPool, frozen_query, vit_tokens
from cl.distributed import shard_call
from cl.registry import STRATEGIES
from strategies.prompt_base import PromptConfig, PromptStrategy


@dataclass
class L2PConfig(PromptConfig):
    name: str = "l2p"
    optimizer: str = "adam"           # l2p-pytorch: Adam, betas (0.9, 0.999), constant lr
    lr: float = 0.001875              # 0.03 * batch 16 / 256 (l2p-pytorch cifar100_l2p, lr scaled by batch)
    batch_size: int = 16              # l2p-pytorch cifar100_l2p
    grad_clip: float = 1.0            # l2p-pytorch cifar100_l2p --clip-grad 1.0 (official config: grad_clip_max_norm 1.0)
    epochs: int = 5                   # l2p-pytorch cifar100_l2p (Split CIFAR-100)
    pool_size: int = 10               # paper Sec. 5: M = 10
    length: int = 5                   # paper: L_p = 5
    top_k: int = 5                    # paper: N = 5
    pull_coeff: float = 0.1           # paper Eq. 5 lambda = 0.1 (pull_constraint_coeff)
    batchwise_prompt: bool = True     # l2p-pytorch/JAX configs: the batch's most frequent top-k ids (at evaluation too)
    eval_batch_size: int = 16         # the authors evaluate in batches of the training size: l2p-pytorch datasets.py
                                      # (test DataLoader batch_size=args.batch_size, 16), google-research/l2p per-device 16
    query_cache: bool = True          # frozen query computed once per training image (docs/prompts.md)


@STRATEGIES.register("l2p")
class L2P(PromptStrategy):
    """Prompt pool with key-query matching, prompts at the input, head on the prompt tokens."""
    distributed_ok = True           # the same steps on every rank; checked by tests/test_distributed.py

    Config = L2PConfig
    label_types = ("single", "multi")   # multi-hot targets: masked BCE (PromptStrategy.task_loss)
    module_key = "pool"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pool = PromptPool(self.cfg.pool_size, (self.cfg.length, self.vit.embed_dim), self.vit.embed_dim)

    def forward(self, x, query):
        """(logits, selected indices, similarity) for images x in [0, 1]."""
        idx, sim = self.pool.select(query, self.cfg.top_k, self.cfg.batchwise_prompt)
        prompts = self.pool.prompts[idx].flatten(1, 2)              # [B, top_k * length, D]
        feats = shard_call(self._prompt_features, x, prompts)         # torchrun: this rank's rows (cl/distributed.py)
        return self.vit.head(feats), idx, sim

    def _prompt_features(self, x, prompts):
        """Mean of the prompt tokens' outputs (head_type='prompt'), row by row."""
        tokens = vit_tokens(self.vit, self.normalize(x), prompts=prompts)
        n = self.vit.num_prefix_tokens
        return tokens[:, n:n + prompts.shape[1]].mean(1)

    def loss(self, batch):
        logits, idx, sim = self.forward(batch.x, self.query(batch))
        return self.task_loss(logits, batch.y) + self.cfg.pull_coeff * self.pool.pull_loss(sim, idx)

    def predict(self, x):
        self.model.eval()
        with self.autocast():
            return self.mask_unseen(self.forward(x, frozen_query(self.vit, self.normalize(x)))[0].float())
