"""Run folders: ``<output_dir>/<name>/<timestamp>[-k]/``, never overwritten, never outside output_dir.

A run folder is recognisably ours: it is created complete with its marker ``.cl-run`` (and its
``config.yaml``) in a hidden staging folder that is then renamed into place, so a kill leaves a
resumable folder or nothing. ``open_run`` is what the runner calls before it touches a folder:

- a new run goes into a folder that does not exist, is empty, or was just reserved by
  ``new_run_dir``; any other folder is refused (a run folder is never overwritten);
- ``resume`` checks, before touching anything, that the folder is ours, that no other process
  writes it (a lock held while the run writes), that the config did not change in a key that
  decides the results, and that the checkpoint loads safely and carries the same fingerprint of
  config and stream; then it removes the temporary files that a killed write left (our own names
  only) and records the resume in the marker.
"""
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid

import yaml

from cl import faults, io
from cl.errors import CheckpointError, ConfigError, DataError, OutputError

MARKER = ".cl-run"
CONFIG = "config.yaml"
CHECKPOINT = os.path.join("checkpoints", "last.pt")
STAGING = re.compile(r"^\.cl-new-(?P<pid>\d+)-[0-9a-f]{8}$")
# Config keys that do not change what a run computes: they may differ on --resume (and are recorded).
FREE_KEYS = ("name", "output_dir", "device", "threads", "save_model", "logging.")
# Files that the run writes, by folder: stale-temp clean-up touches only their temporaries.
OUR_FILES = {"": {MARKER, CONFIG, "results.json", "metrics.csv", "model.pt", "error.log"},
             "checkpoints": {"last.pt"}, "plots": lambda name: name.endswith(".png")}
_HELD = {}   # absolute run folder -> fd holding its lock (this process)
_CREATED = {}   # run folder made by new_run_dir -> the parent folders it had to create


def sanitize_name(name):
    """Keep letters, digits, '-', '_' and '.'; path separators and '..' cannot escape the output folder."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))
    clean = re.sub(r"\.{2,}", "_", clean).strip("._") or "run"
    return clean


# ---------------------------------------------------------------------------- creating
def new_run_dir(output_dir, name, config_text=None):
    """Create and return a fresh run folder ``output_dir/name/<timestamp>[-k]`` holding the marker
    (and ``config.yaml`` when ``config_text`` is given); a clear ConfigError when output_dir is not
    writable."""
    base = os.path.abspath(output_dir)
    parent = os.path.join(base, sanitize_name(name))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    new_folders = [p for p in (base, parent) if not os.path.lexists(p)]
    for k in range(1000):
        path = os.path.join(parent, stamp if k == 0 else f"{stamp}-{k}")
        if os.path.lexists(path):
            continue
        assert os.path.commonpath([base, path]) == base
        try:
            create_run_folder(path, config_text, where="output_dir")
        except FileExistsError:
            continue
        _CREATED[path] = new_folders          # discard_unused removes them again if still empty
        return path
    raise ConfigError(f"Too many runs named '{name}' started in the same second under {parent}.")


def create_run_folder(path, config_text=None, where="the run folder"):
    """Create ``path`` complete (marker first, then config.yaml) by renaming a hidden staging folder
    into place. ``path`` may exist as an empty folder. FileExistsError when it holds anything."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_dead_staging(parent)
        staging = os.path.join(parent, f".cl-new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.mkdir(staging)
        try:
            _write_marker(staging, {"created": _now(), "resumes": []})
            faults.hit("folder:staged")
            if config_text is not None:
                io.write_text(os.path.join(staging, CONFIG), config_text)
            try:
                os.rename(staging, path)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FileExistsError(path) from None
                raise
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging, ignore_errors=True)
        faults.hit("folder:created")
    except FileExistsError:
        raise
    except (OSError, OutputError) as e:
        why = getattr(e, "strerror", None) or str(e)
        fix = (f"Choose a writable folder with {where}=PATH." if where == "output_dir"
               else "Choose a writable folder for the run.")
        raise ConfigError(f"Cannot create the run folder {path}: {why}. {fix}") from None
    return path


def _remove_dead_staging(parent):
    """Remove staging folders (``.cl-new-<pid>-<hex>``, our own names only) of processes that died."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = STAGING.match(name)
        if m and not _alive(int(m["pid"])):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _write_marker(folder, data):
    io.write_json(os.path.join(folder, MARKER), {"written_by": "cl", "version": 1, **data})


def read_marker(folder):
    """The marker's contents ({} when absent or unreadable)."""
    try:
        with open(os.path.join(folder, MARKER)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def is_ours(folder):
    """A run folder written by cl: it holds the marker, or (folders from before the marker) a
    config.yaml beside a results.json that has our schema."""
    if read_marker(folder).get("written_by") == "cl":
        return True
    try:
        with open(os.path.join(folder, "results.json")) as f:
            res = json.load(f)
        return isinstance(res, dict) and "schema_version" in res and os.path.isfile(os.path.join(folder, CONFIG))
    except (OSError, ValueError):
        return False


def _only_reserved(folder):
    """True when the folder holds nothing but what new_run_dir put there."""
    return set(os.listdir(folder)) <= {MARKER, CONFIG} and is_ours(folder)


def discard_unused(run_dir):
    """Remove a run folder that holds nothing but its marker and config (a run that failed before
    it wrote anything); anything else is left alone. Returns True when removed."""
    release(run_dir)
    try:
        if not os.path.isdir(run_dir) or not _only_reserved(run_dir):
            return False
        for name in os.listdir(run_dir):
            os.unlink(os.path.join(run_dir, name))
        os.rmdir(run_dir)
        for folder in reversed(_CREATED.pop(os.path.abspath(run_dir), [])):
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- the fingerprint
def fingerprint(cfg, scenario):
    """What decides a run's results: the config without the free keys, and the stream (protocol,
    experiences, classes, input shape, class order, domains, test sizes). Returns
    {"digest": hex, "fields": {dotted key: value}}."""
    from cl.config import to_dict
    fields = {k: v for k, v in _flatten(to_dict(cfg)).items() if not _free(k)}
    fields.update({
        "stream.protocol": scenario.protocol,
        "stream.experiences": len(scenario.experiences),
        "stream.num_classes": int(scenario.num_classes),
        "stream.input_shape": list(scenario.input_shape),
        "stream.class_order": [int(c) for c in scenario.class_order],
        "stream.domains": [str(d) for d in scenario.domains],
        "stream.test_sizes": [len(e.test) for e in scenario.experiences],
    })
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"digest": digest, "fields": fields}


def _free(key):
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FREE_KEYS)


def _flatten(mapping, prefix=""):
    out = {}
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(old, new, limit=6):
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys[:limit])
    return keys, shown + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def _short(v):
    text = json.dumps(v, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- the stream
def check_stream(scenario):
    """A DataError when an experience has no test samples (its accuracy would enter the averages
    as 0.0) or, in the train/eval protocol, no training samples."""
    for e in scenario.experiences:
        what = "samples (the online stream of this domain)" if scenario.protocol == "online" else "test samples"
        if len(e.test) == 0:
            raise DataError(f"Experience {e.index} ({e.domain or 'classes ' + str(list(e.classes))}) of scenario "
                            f"'{scenario.name}' has no {what}: its accuracy would be a meaningless 0. Check the "
                            "dataset (an empty class folder?), the class split and test_subsample.")
        if scenario.protocol == "train_eval" and e.train is not None and len(e.train) == 0 \
                and not getattr(e.train, "eval_only", False):      # text_domains' train: false (evaluated only)
            raise DataError(f"Experience {e.index} of scenario '{scenario.name}' has no training samples "
                            f"(classes {list(e.classes)}). Check the dataset, the class split and train_fraction.")


# ---------------------------------------------------------------------------- opening a run
def open_run(run_dir, cfg, scenario, resume=False, map_location="cpu"):
    """The runner's entry: check everything, then lock and prepare ``run_dir``.

    Returns the checkpoint dict to resume from (None for a fresh start). Raises ConfigError,
    CheckpointError or DataError, with nothing in the folder touched, when the run cannot start
    there."""
    from cl.config import to_yaml
    check_stream(scenario)
    run_dir = os.path.abspath(run_dir)
    text = to_yaml(cfg)
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"Run folder {run_dir} is a file, not a folder. Choose another run folder.")
    fresh = not os.path.isdir(run_dir) or not os.listdir(run_dir)
    if fresh:
        try:
            create_run_folder(run_dir, text)
        except FileExistsError:
            raise ConfigError(f"Run folder {run_dir} was created by another process at the same moment. "
                              "Run again.") from None
        _lock(run_dir)
        return None
    if not resume:
        if not _only_reserved(run_dir):
            raise ConfigError(f"Run folder {run_dir} already holds files; a run folder is never overwritten. "
                              f"Continue that run with `cl run --resume {run_dir}` or choose a new folder.")
        _lock(run_dir)
        if _read(os.path.join(run_dir, CONFIG)) != text:
            io.write_text(os.path.join(run_dir, CONFIG), text)
        return None
    return _check_resume(run_dir, cfg, scenario, text, map_location)


def _check_resume(run_dir, cfg, scenario, text, map_location):
    from cl.config import to_dict
    if not is_ours(run_dir):
        raise ConfigError(f"{run_dir} is not a run folder written by cl (no {MARKER} marker, no results.json of a "
                          "run): --resume only continues runs that cl started, and leaves other folders alone. "
                          f"To run a config it holds, use `cl run {os.path.join(run_dir, CONFIG)}`.")
    config_path = os.path.join(run_dir, CONFIG)
    try:
        stored = yaml.safe_load(_read(config_path)) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"Cannot resume {run_dir}: its {CONFIG} cannot be read ({type(e).__name__}). "
                          "Restore it, or start a new run.") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"Cannot resume {run_dir}: its {CONFIG} does not hold a config mapping.")
    old, new = _flatten(stored), _flatten(to_dict(cfg))
    # Keys the stored config lacks (added to the schema since) take their defaults: not compared.
    keys, shown = _differences({k: v for k, v in old.items() if not _free(k)},
                               {k: v for k, v in new.items() if not _free(k) and k in old})
    if keys:
        raise ConfigError(f"Cannot resume {run_dir} with a different config ({shown}): its checkpoint, optimizer "
                          "state and results come from the config it started with. Resume without these "
                          "overrides, or start a new run with them. Only name, output_dir, device, threads, "
                          "save_model and logging.* may change on --resume.")
    _lock(run_dir)
    try:
        ckpt = _load_checkpoint(run_dir, cfg, scenario, map_location)
        if not os.access(run_dir, os.W_OK):
            raise ConfigError(f"Cannot resume {run_dir}: the folder is read-only. Make it writable "
                              f"(chmod -R u+w {run_dir}) or copy it somewhere writable and resume the copy.")
        remove_stale_temps(run_dir)
        changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        marker = read_marker(run_dir)
        resumes = list(marker.get("resumes") or []) + [{
            "time": _now(), "from_experience": int(ckpt["state"].get("next", 0)) if ckpt else 0,
            "changed": changed}]
        _write_marker(run_dir, {"created": marker.get("created"), "resumes": resumes})
        if changed:
            io.write_text(config_path, text)
    except BaseException:
        release(run_dir)
        raise
    return ckpt


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _load_checkpoint(run_dir, cfg, scenario, map_location):
    """The run's checkpoint (None when it has none yet), refused when it is not one of this run."""
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.lexists(path):
        return None
    ckpt = io.torch_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state"), dict) or "strategy" not in ckpt:
        raise CheckpointError(f"Cannot resume from {path}: it is not a checkpoint written by a cl run (it lacks the "
                              "run state and strategy state). Restore the run's own checkpoint, or delete it to "
                              "restart the run from the beginning.")
    mine = fingerprint(cfg, scenario)
    theirs = ckpt.get("fingerprint")
    if isinstance(theirs, dict) and "fields" in theirs:
        if theirs.get("digest") != mine["digest"]:
            _, shown = _differences(theirs["fields"], mine["fields"])
            raise ConfigError(f"Cannot resume {run_dir}: its checkpoint {path} was written by a different run "
                              f"({shown}; checkpoint -> this run). Resuming would mix two experiments. Restore "
                              "the run's own checkpoint, or start a new run.")
        return ckpt
    state, n = ckpt["state"], len(scenario.experiences)
    done, rows = state.get("next", 0), state.get("R") or []
    if not isinstance(done, int) or not 0 <= done <= n or len(rows) > n:
        raise ConfigError(f"Cannot resume {run_dir}: its checkpoint {path} does not fit this stream ({done} "
                          f"experiences done, {len(rows)} rows of results; this stream has {n} experiences). Restore "
                          "the run's own checkpoint, or start a new run.")
    import warnings
    warnings.warn(f"Checkpoint {path} carries no fingerprint (written before fingerprints existed): only its "
                  "shape was checked against this run.", stacklevel=3)
    return ckpt


def remove_stale_temps(run_dir):
    """Delete the temporary files that a killed write left behind: only those of files the run
    itself writes (``.results.json.ab12cd34.tmp`` ...), only in the run folder, ``checkpoints``
    and ``plots``. Returns the paths removed."""
    removed = []
    for sub, ours in OUR_FILES.items():
        folder = os.path.join(run_dir, sub) if sub else run_dir
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if io.is_our_temp(name, ours) and os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
    return removed


# ---------------------------------------------------------------------------- the lock
def _lock(run_dir):
    """Hold an exclusive lock on the folder while this process writes it (released by ``release``
    or when the process ends); a ConfigError when another process holds it."""
    key = os.path.abspath(run_dir)
    release(key)                       # a lock this process kept from an earlier failed attempt
    fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"Run folder {key} is being written by another process (a run or a resume of it is "
                          "still going). Wait for it to finish or stop it, then resume.") from None
    _HELD[key] = fd


def release(run_dir):
    """Release this process's lock on ``run_dir`` (no-op when not held)."""
    fd = _HELD.pop(os.path.abspath(run_dir), None)
    if fd is not None:
        os.close(fd)
