"""A validated sweep spec -> the list of jobs: override sets x grid points x seeds, each with a
deterministic label (its folder name), a digest when the label is too long, and its fully
resolved run config."""
import hashlib
import itertools
import json
import os

from cl.errors import ConfigError
from cl.rundir import sanitize_name
from cl.smoke import apply_smoke, nest

__all__ = ["SWEEP_DEFAULTS", "SWEEP_THREADS", "MAX_LABEL", "variants", "flatten", "label_of", "plan"]

# Sweeps run many processes side by side: keep their consoles quiet (a file may turn these on).
SWEEP_DEFAULTS = {"logging": {"progress": False, "console": False}}
MAX_LABEL = 120
# torch threads of a sweep run whose config says ``threads: 0``: the same for every engine and
# every --workers, so a run's results do not depend on how the sweep was scheduled.
SWEEP_THREADS = 1


def variants(spec):
    """[dotted override dict] : each override set crossed with every grid point, in file order."""
    grid = spec.get("grid") or {}
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] or [{}]
    sets = spec.get("overrides") or [{}]
    return [{**flatten(o), **p} for o in sets for p in points]


def flatten(mapping, prefix=""):
    """Nested or dotted mapping -> flat dotted dict."""
    out = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def label_of(overrides):
    """Folder name of an override set: ``key-value__key-value`` sanitized ('base' when empty)."""
    if not overrides:
        return "base"
    text = "__".join(f"{k}-{_fmt_value(v)}" for k, v in overrides.items())
    label = sanitize_name(text)
    if len(label) > MAX_LABEL:
        label = label[:MAX_LABEL] + "-" + _digest(overrides)
    return label


def _fmt_value(v):
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _digest(obj):
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def plan(spec, cli_overrides=(), smoke=False):
    """The sweep's jobs: [{id, label, overrides, seed, run_dir, config}] with validated configs.

    ``config`` is the fully resolved run config as a plain dict (what the worker runs).
    """
    from cl.config import build_config, load_yaml, parse_overrides, to_dict
    base = [SWEEP_DEFAULTS]
    if spec.get("base"):
        base.append(load_yaml(spec["base"]))
    if spec.get("experiment"):
        base.append(nest(spec["experiment"]))
    cli = [parse_overrides(list(cli_overrides))] if cli_overrides else []
    sets = variants(spec)
    labels = [label_of(o) for o in sets]
    for i, lab in enumerate(labels):            # sanitizing can map two sets to one name
        if labels.count(lab) > 1:
            labels[i] = f"{lab}-{_digest(sets[i])}"
    if len(set(labels)) != len(labels):
        raise ConfigError(f"The sweep lists the same override set twice: {sets}. Remove the duplicate.")
    seeds = spec.get("seeds")
    if seeds is None:
        seeds = [int(build_config(*base, *cli).seed)]
    if smoke:
        seeds = seeds[:1]
    jobs = []
    for overrides, label in zip(sets, labels):
        for seed in seeds:
            sources = base + [nest(overrides), {"seed": seed}]
            if smoke:
                sources = apply_smoke(sources, spec.get("smoke"))
            sources = sources + cli
            try:
                cfg = build_config(*sources)
            except ConfigError as e:
                raise ConfigError(f"Run '{label}' (seed {seed}) of sweep '{spec['name']}': {e}") from None
            config = to_dict(cfg)
            if not config.get("threads"):           # 0 ("torch's default") would depend on the machine
                config["threads"] = SWEEP_THREADS   # and, with workers, on --workers: fix it
            jobs.append({"id": f"{label}/seed{seed}", "label": label, "overrides": overrides, "seed": seed,
                         "run_dir": os.path.join(label, f"seed{seed}"), "config": config})
    return jobs


