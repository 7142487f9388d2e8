"""Structured configs (OmegaConf dataclasses): defaults -> YAML -> command-line overrides.

The run config nests four sub-configs. ``scenario`` and ``strategy`` take the config dataclass
registered for the chosen name, so a key that the chosen strategy does not have is an error:

    cfg = load_config("experiments/quickstart.yaml", ["strategy.lr=0.05", "seed=3"])
"""
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

from cl.errors import ConfigError, did_you_mean
from cl.registry import MODELS, SCENARIOS, STRATEGIES, load_builtins
from cl.schedules import ScheduleConfig


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
    nesterov: bool = False          # sgd only (the RMT benchmark's ImageNet-C configs use nesterov momentum)
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw only
    batch_size: int = 32
    epochs: int = 1                 # train_eval protocol: passes over each experience
    eval_batch_size: int = 256
    reset_every: int = 0            # online protocol: restore the initial state every N updates (0: never)
    grad_clip: float = 0.0          # clip the gradients' global L2 norm to this before each step (0: off)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # learning-rate schedule (cl/schedules.py)


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
    amp: bool = False               # mixed precision (autocast) in training and prediction
    amp_dtype: str = "fp16"         # fp16: CUDA only, with a gradient scaler (amp on CPU stays off) | bf16: CUDA or CPU
    compile: bool = False           # torch.compile the model in place (nn.Module.compile; same state_dict keys)
    threads: int = 0                # torch CPU threads (0: leave torch's default)
    save_model: bool = False        # write model.pt (the network's state_dict) at the end
    hide_boundaries: bool = False   # train_eval: task-free, no before/after_experience hooks
    eval_every: int = 0             # train_eval: continual evaluation every N steps (0: off)
    eval_subset: int = 0            # continual evaluation on a fixed seeded subset of N test samples per task (0: all)
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
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}): a YAML config must be a text file. Check "
                          "that you passed the right file.") from None
    except OSError as e:
        raise ConfigError(f"Cannot read config file {path}: {e.strerror or e}. Pass a readable YAML file.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Malformed YAML in {path}: {e}. Fix the syntax at the position shown.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}.")
    return data


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_0-9][A-Za-z0-9_]*)*$")


def parse_overrides(overrides):
    """``["a.b=1", "seed=3"]`` -> DictConfig; a malformed override is a ConfigError."""
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"Override '{o}' is not of the form key=value (e.g. strategy.lr=0.01).")
        if not _KEY.match(o.partition("=")[0]):
            raise ConfigError(f"Override '{o}': '{o.partition('=')[0]}' is not a config key (dotted names of "
                              "letters, digits and '_', e.g. strategy.lr=0.01).")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as e:  # omegaconf grammar errors
        raise ConfigError(f"Cannot parse overrides {list(overrides)}: {e}") from None


def build_config(*sources):
    """Merge mappings (YAML dicts, override DictConfigs) onto the defaults and validate.

    Returns a read-only, fully resolved DictConfig with the chosen scenario/strategy schemas.
    """
    load_builtins()
    parts = [OmegaConf.create(s) if isinstance(s, dict) else s for s in sources]
    raw = _merge(*parts) if parts else OmegaConf.create({})
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
        cfg = _merge(schema, raw)
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
    check_numbers(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _merge(*configs):
    """OmegaConf.merge; a list meeting a mapping at one key is a ConfigError naming that key."""
    try:
        return OmegaConf.merge(*configs)
    except TypeError:                  # omegaconf: "Cannot merge incompatible container types"
        seen = {}
        for c in configs:
            for key, kind in _container_kinds(c):
                if seen.setdefault(key, kind) != kind:
                    raise ConfigError(f"Wrong shape for '{key}': a {kind} where a {seen[key]} is expected. Give it "
                                      f"as a {seen[key]} (e.g. {'[1, 2]' if seen[key] == 'list' else '{a: 1}'}).") \
                        from None
        raise ConfigError("A list and a mapping meet at the same config key; check the shape of the values "
                          "you set.") from None


def _container_kinds(node, prefix=""):
    """(dotted key, 'list' | 'mapping') of every container node, also those whose value is None."""
    for key in node.keys():
        child = node._get_node(key)
        full = f"{prefix}{key}"
        if isinstance(child, ListConfig):
            yield full, "list"
        elif isinstance(child, DictConfig):
            yield full, "mapping"
            if not child._is_none() and not child._is_missing():
                yield from _container_kinds(child, full + ".")


def load_config(path=None, overrides=()):
    """defaults -> YAML file -> ``key=value`` overrides, validated.

    A top-level ``smoke:`` mapping in the file is for smoke mode only (cl.smoke) and is ignored here."""
    data = load_yaml(path) if path else {}
    if path and not data:
        raise ConfigError(f"{path} is empty: an experiment file sets at least scenario.name and strategy.name "
                          "(see experiments/quickstart.yaml).")
    sources = [{k: v for k, v in data.items() if k != "smoke"}] if path else []
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
        (cfg.eval_subset >= 0, "eval_subset", f"must be >= 0, got {cfg.eval_subset}"),
        (bool(str(cfg.name).strip()), "name", "must not be empty"),
        (re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(cfg.device)), "device",
         f"must be auto, cpu, cuda, cuda:N or mps, got '{cfg.device}'"),
        (cfg.threads >= 0, "threads", f"must be >= 0 (0: torch's default), got {cfg.threads}"),
        (cfg.amp_dtype in ("fp16", "bf16"), "amp_dtype", f"must be fp16 or bf16, got '{cfg.amp_dtype}'"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"Invalid value for '{key}': {msg}.")


UNIT_INTERVAL = ("fraction", "momentum", "ema_decay")   # fields named *<these> lie in [0, 1]


def check_numbers(cfg):
    """The range rules every config field follows, whatever plugin declares it: a number is finite;
    it is >= 0 unless its default is negative (a -1 "all" sentinel: then >= -1); a field named
    ``*fraction``, ``*momentum`` or ``*ema_decay`` lies in [0, 1]. Numbers in ``model.args``
    (widths, depths, ...) are finite and >= 0. A ConfigError names the first field that breaks one."""
    for key, value, default in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"Invalid value for '{key}': must be a finite number, got {value}.")
        low = -1 if default is not None and default < 0 else 0
        if value < low:
            raise ConfigError(f"Invalid value for '{key}': must be >= {low}, got {value}.")
        if key.rsplit(".", 1)[-1].endswith(UNIT_INTERVAL) and value > 1:
            raise ConfigError(f"Invalid value for '{key}': must be in [0, 1], got {value}.")


def _numbers(node, prefix=""):
    """(dotted key, value, default or None) of every int/float field, recursively."""
    schema = OmegaConf.get_type(node)
    defaults = {f.name: f.default for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    for key in node:
        value = node[key]
        full = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from _numbers(value, full + ".")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            default = defaults.get(key)
            yield full, value, default if isinstance(default, (int, float)) else None


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
