"""Strategy plugins: one file per method. Each is declared here by name and imported only when a
run names it (its module registers the class with ``@STRATEGIES.register``)."""
from cl.registry import STRATEGIES

for _name, _module in [
    ("finetune", "finetune"), ("joint", "joint"),
    ("er", "er"), ("derpp", "derpp"), ("lwf", "lwf"), ("ewc", "ewc"),   # replay and regularization
    ("nmc", "nmc"), ("fpf", "fpf"), ("kfpf", "kfpf"),                 # frozen features, FPF / k-FPF
    ("source", "source"), ("bn", "bn"), ("tent", "tent"),              # test-time adaptation baselines
    ("mean_teacher", "mean_teacher"), ("cotta", "cotta"), ("rmt", "rmt"),  # EMA-teacher test-time adaptation
    ("l2p", "l2p"), ("dualprompt", "dualprompt"), ("coda_prompt", "coda_prompt"), ("lae", "lae"),  # prompts / PET
    ("token_replay", "token_replay"), ("domain_mixture", "domain_mixture"),   # language-model continual pre-training
]:
    STRATEGIES.declare(_name, f"strategies.{_module}")
