"""Structured configs (OmegaConf dataclasses): defaults -> YAML -> command-line overrides.

The run config nests four sub-configs. ``scenario`` and ``strategy`` take the config dataclass
registered for the chosen name, so a key that the chosen strategy does not have is an error:

    cfg = load_config("experiments/quickstart.yaml", ["strategy.lr=0.05", "seed=3"])
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

from cl.errors import ConfigError, did_you_mean
from cl.registry import MODELS, SCENARIOS, STRATEGIES, load_builtins


@dataclass
class ScenarioConfig:
    """Fields every scenario has; each generator extends it with its own."""
    name: str = MISSING


@dataclass
class StrategyConfig:
    """Optimisation fields every strategy has; each strategy extends it with its own defaults."""
    name: str = MISSING
    optimizer: str = "sgd"          # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw only
    batch_size: int = 32
    epochs: int = 1                 # train_eval protocol: passes over each experience
    eval_batch_size: int = 256
    reset_every: int = 0            # online protocol: restore the initial state every N updates (0: never)
    grad_clip: float = 0.0          # clip the gradients' global L2 norm to this before each step (0: off)


@dataclass
class ModelConfig:
    name: str = "mlp"
    args: Dict[str, Any] = field(default_factory=dict)     # keyword arguments of the model builder
    pretrained: bool = False        # download pretrained weights (timm / torchvision; needs internet)
    checkpoint: Optional[str] = None  # local weights, loaded with weights_only=True
    normalize: Optional[List[List[float]]] = None  # [[means], [stds]] applied inside the model on [0,1] input
    channels_last: bool = False


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    plots: bool = True
    progress: bool = True           # progress bars on long loops
    console: bool = True            # final table on stdout
    log_every: int = 50             # training scalars to TensorBoard every N steps


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    amp: bool = False               # mixed precision, CUDA only
    threads: int = 0                # torch CPU threads (0: leave torch's default)
    save_model: bool = False        # write model.pt (the network's state_dict) at the end
    hide_boundaries: bool = False   # train_eval: task-free, no before/after_experience hooks
    eval_every: int = 0             # train_eval: continual evaluation every N steps (0: off)
    eval_initial: bool = True       # train_eval: evaluate the initial model (for forward transfer)
    eval_all_domains: bool = False  # online: accuracy of the adapted model on every domain after each
    test_subsample: float = 1.0     # fraction of each test set used for evaluation (speed; never the online stream)
    reference_run: Optional[str] = None  # train_eval: results.json of a joint run of the same stream (intransigence)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def load_yaml(path):
    """Parse a YAML file with the safe loader; malformed YAML is a ConfigError naming the line."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Malformed YAML in {path}: {e}. Fix the syntax at the position shown.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}.")
    return data


def parse_overrides(overrides):
    """``["a.b=1", "seed=3"]`` -> DictConfig; a malformed override is a ConfigError."""
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"Override '{o}' is not of the form key=value (e.g. strategy.lr=0.01).")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as e:  # omegaconf grammar errors
        raise ConfigError(f"Cannot parse overrides {list(overrides)}: {e}") from None


def build_config(*sources):
    """Merge mappings (YAML dicts, override DictConfigs) onto the defaults and validate.

    Returns a read-only, fully resolved DictConfig with the chosen scenario/strategy schemas.
    """
    load_builtins()
    raw = OmegaConf.merge(*[OmegaConf.create(s) if isinstance(s, dict) else s for s in sources]) \
        if sources else OmegaConf.create({})
    schema = OmegaConf.structured(RunConfig)
    for section, registry in (("scenario", SCENARIOS), ("strategy", STRATEGIES)):
        name = OmegaConf.select(raw, f"{section}.name")
        if name is None:
            raise ConfigError(f"Missing required value '{section}.name'. Choose one of: "
                              f"{', '.join(registry.names())}.")
        config_cls = registry.config_of(str(name))
        if config_cls is not None:
            schema[section] = OmegaConf.structured(config_cls)
    model_name = str(OmegaConf.select(raw, "model.name", default=schema.model.name))
    if not model_name.startswith("timm/"):   # timm/<arch> is resolved by cl.models.build_model
        MODELS.get(model_name)  # name check
    try:
        cfg = OmegaConf.merge(schema, raw)
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise _unknown_key_error(e, schema) from None
    except MissingMandatoryValue as e:
        raise ConfigError(f"Missing required value '{e.full_key}'. Set it in the YAML or as "
                          f"{e.full_key}=VALUE on the command line.") from None
    except ValidationError as e:
        raise ConfigError(f"Wrong type for '{e.full_key}': {e.msg.splitlines()[0]}. "
                          f"Expected {_type_name(schema, e.full_key)}.") from None
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_config(path=None, overrides=()):
    """defaults -> YAML file -> ``key=value`` overrides, validated.

    A top-level ``smoke:`` mapping in the file is for smoke mode only (cl.smoke) and is ignored here."""
    sources = [{k: v for k, v in load_yaml(path).items() if k != "smoke"}] if path else []
    sources.append(parse_overrides(overrides))
    return build_config(*sources)


def validate(cfg):
    """Value checks that types cannot express."""
    s = cfg.strategy
    checks = [
        (s.lr >= 0, "strategy.lr", f"must be >= 0, got {s.lr}"),
        (s.batch_size > 0, "strategy.batch_size", f"must be > 0, got {s.batch_size}"),
        (s.eval_batch_size > 0, "strategy.eval_batch_size", f"must be > 0, got {s.eval_batch_size}"),
        (s.epochs >= 1, "strategy.epochs", f"must be >= 1, got {s.epochs}"),
        (s.optimizer in ("sgd", "adam", "adamw"), "strategy.optimizer",
         f"must be one of sgd, adam, adamw, got '{s.optimizer}'{did_you_mean(s.optimizer, ['sgd', 'adam', 'adamw'])}"),
        (0 < cfg.test_subsample <= 1, "test_subsample", f"must be in (0, 1], got {cfg.test_subsample}"),
        (cfg.eval_every >= 0, "eval_every", f"must be >= 0, got {cfg.eval_every}"),
        (bool(str(cfg.name).strip()), "name", "must not be empty"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"Invalid value for '{key}': {msg}.")


def to_yaml(cfg):
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg):
    return OmegaConf.to_container(cfg, resolve=True)


def _unknown_key_error(e, schema):
    full_key = getattr(e, "full_key", None) or str(e)
    parent, _, key = str(full_key).rpartition(".")
    node = OmegaConf.select(schema, parent) if parent else schema
    valid = list(node.keys()) if isinstance(node, DictConfig) else []
    where = f"in '{parent}'" if parent else "at the top level"
    return ConfigError(f"Unknown config key '{full_key}'{did_you_mean(key, valid)}. "
                       f"Valid keys {where}: {', '.join(map(str, valid))}.")


def _type_name(schema, full_key):
    parent, _, key = str(full_key).rpartition(".")
    node = OmegaConf.select(schema, parent) if parent else schema
    try:
        t = OmegaConf.get_type(node, key)
        return getattr(t, "__name__", str(t))
    except Exception:
        return "a value of the declared type"


def config_fields(config_cls):
    """Names of a config dataclass's fields (for docs and `cl list --verbose`)."""
    return [f.name for f in dataclasses.fields(config_cls)]
