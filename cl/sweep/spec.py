"""The sweep file: load and validate it (``load_spec``), resolve the paths it names.

Sweep file (keys other than these are an error)::

    name: my_sweep                   # default: the file's stem
    base: ../quickstart.yaml         # optional experiment file, relative to this file
    experiment: {strategy: {lr: 0.1}}  # optional run config merged over base (nested or dotted keys)
    overrides:                       # optional list of override sets (dotted keys)
      - {strategy.name: finetune}
      - {strategy.name: er, strategy.buffer_size: 500}
    grid: {strategy.lr: [0.01, 0.1]} # optional: every combination, crossed with each override set
    seeds: [0, 1, 2]                 # default: the experiment's seed
    smoke: {strategy.batch_size: 8}  # optional overrides for --smoke (see cl.smoke)
"""
import os

from cl.errors import ConfigError, did_you_mean

__all__ = ["SPEC_KEYS", "load_spec", "resolve_relative"]

SPEC_KEYS = ("name", "description", "base", "experiment", "overrides", "grid", "seeds", "smoke")


def load_spec(path):
    """The sweep file as a validated dict (``base`` resolved to a path)."""
    from cl.config import load_yaml
    spec = load_yaml(path)
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(f"Unknown key '{key}' in sweep file {path}{did_you_mean(key, SPEC_KEYS)}. "
                              f"Valid keys: {', '.join(SPEC_KEYS)}.")
    spec.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    if spec.get("base"):
        spec["base"] = resolve_relative(spec["base"], path)
    for key in ("experiment", "grid", "smoke"):
        if not isinstance(spec.get(key) or {}, dict):
            raise ConfigError(f"'{key}' in {path} must be a mapping, got {type(spec[key]).__name__}.")
    overrides = spec.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, dict) for o in overrides):
        raise ConfigError(f"'overrides' in {path} must be a list of mappings, e.g. [{{strategy.name: er}}].")
    for key, values in (spec.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid '{key}' in {path} must be a non-empty list of values, got {values!r}.")
    seeds = spec.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"'seeds' in {path} must be a non-empty list of integers, got {seeds!r}.")
    if not spec.get("base") and not spec.get("experiment"):
        raise ConfigError(f"Sweep file {path} needs 'base: EXPERIMENT.yaml' and/or an 'experiment:' mapping.")
    return spec


def resolve_relative(ref, from_file):
    """A path named in a file: relative to that file's folder, else to the working directory."""
    if os.path.isabs(ref):
        return ref
    here = os.path.join(os.path.dirname(os.path.abspath(from_file)), ref)
    if os.path.exists(here) or not os.path.exists(ref):
        return here
    return os.path.abspath(ref)


