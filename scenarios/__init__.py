"""Scenario generators and dataset adapters, declared by name here and imported when a run names
them (each module registers its entries in ``cl.registry.SCENARIOS`` / ``DATASETS``)."""
from cl.registry import DATASETS, SCENARIOS

for _name, _module in [
    ("class_split", "class_split"), ("instance_split", "class_split"), ("online_class_split", "class_split"),
    ("permuted", "domain_stream"), ("rotated", "domain_stream"), ("domain_folders", "domain_stream"),
    ("corruption_stream", "corruption_stream"), ("power_law", "power_law"), ("mtil", "mtil"),
    ("synthetic_shift", "synthetic"), ("avalanche", "avalanche_adapter"),
    ("leave_one_domain_out", "domain_generalization"),                 # DG: train on all domains but one
    ("text_domains", "text_domains"),                                   # language-model continual pre-training
    ("multilabel_split", "multilabel"),                                 # multi-label CIL (docs/multi-label.md)
]:
    SCENARIOS.declare(_name, f"scenarios.{_module}")

for _name in ("digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "imagefolder", "npz"):
    DATASETS.declare(_name, "scenarios.datasets")
