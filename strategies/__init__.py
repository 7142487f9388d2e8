"""Strategy plugins: one file per method. Each is declared here by name and imported only when a
run names it (its module registers the class with ``@STRATEGIES.register``)."""
from cl.registry import STRATEGIES

for _name, _module in [
    ("finetune", "finetune"), ("joint", "joint"),
    ("er", "er"), ("derpp", "derpp"), ("lwf", "lwf"), ("ewc", "ewc"),   # replay and regularization
    ("nmc", "nmc"), ("fpf", "fpf"), ("kfpf", "kfpf"),                 # frozen features, FPF / k-FPF
    ("source", "source"), ("bn", "bn"), ("tent", "tent"),              # test-time adaptation baselines
    ("mean_teacher", "mean_teacher"), ("cotta", "cotta"), ("rmt", "rmt"),  # EMA-teacher test-time adaptation
    ("eata", "eata"), ("sar", "sar"), ("rpl", "rpl"), ("deyo", "deyo"),  # entropy / pseudo-label TTA
    ("roid", "roid"), ("cmf", "cmf"),                                   # universal TTA (weighting, prior correction)
    ("lame", "lame"),                                                   # output adjustment, no training
    ("lsa", "lsa"), ("itta", "itta"),                                   # label shift adapter; ITTA (domain generalization)
    ("rotta", "rotta"),                                                 # robust BN + memory + EMA teacher
    ("santa", "santa"),                                                 # source anchor + prototype contrast
    ("gtta", "gtta"),                                                   # self-training + mixed source replay
    ("adacontrast", "adacontrast"),                                     # MoCo + refined pseudo-labels
    ("ttaug", "ttaug"), ("memo", "memo"),                               # AugMix views (single-image TTA)
    ("l2p", "l2p"), ("dualprompt", "dualprompt"), ("coda_prompt", "coda_prompt"), ("lae", "lae"),  # prompts / PET
    ("multi_lane", "multi_lane"),                                       # multi-label CIL (docs/multi-label.md)
    ("token_replay", "token_replay"), ("domain_mixture", "domain_mixture"),   # language-model continual pre-training
    ("clip_finetune", "clip_finetune"), ("zscl", "zscl"), ("clip_lwf", "clip_lwf"), ("wise_ft", "wise_ft"),  # CLIP (MTIL)
    ("tpt", "tpt"), ("difftpt", "difftpt"),                            # CLIP test-time prompt tuning
    ("dda", "dda"), ("sda", "sda"),                                    # diffusion-driven input adaptation
]:
    STRATEGIES.declare(_name, f"strategies.{_module}")
