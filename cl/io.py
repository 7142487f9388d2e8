"""Atomic file writes and safe checkpoint reads.

Writes go to a temporary file in the same folder, are fsynced, then renamed, so a run killed at
any moment leaves either the old file or the new one, never a truncated one. Files get the mode a
plain ``open()`` would give them (0666 minus the umask), so the group can read results as it can
read any file the user writes. A write that fails (disk full, read-only folder) raises
``OutputError`` naming the file; the previous version of that file is kept.

``torch_load`` reads with ``weights_only=True`` and turns every way a file can fail to be a
checkpoint (missing, empty, truncated, not PyTorch, holding code) into one ``CheckpointError``
paragraph.
"""
import errno
import json
import os
import re
import tempfile

import torch

from cl import faults
from cl.errors import CheckpointError, OutputError


def _file_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()


def _atomic(path, write):
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            if faults.ENABLED and faults.fires("write:" + os.path.basename(path)):
                f.flush()  # fault-injection tests: die with a half-written temporary file
                os.ftruncate(f.fileno(), max(0, f.tell() // 2))
                faults.kill()
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise OutputError.of(path, e) from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp):
    if tmp and os.path.exists(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_text(path, text):
    _atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def torch_save(obj, path):
    _atomic(path, lambda f: torch.save(obj, f))


def torch_load(path, map_location="cpu"):
    """Load a checkpoint safely (``weights_only=True``: no code runs from the file).

    Any failure is a CheckpointError that says what the file is (missing, empty, truncated, not a
    PyTorch file, holding objects other than tensors and plain containers) and what to do."""
    path = os.fspath(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint not found: {path}. Check the path.") from None
    except IsADirectoryError:
        raise CheckpointError(f"Checkpoint {path} is a folder, not a file. Pass the .pt file inside it.") from None
    except PermissionError:
        raise CheckpointError(f"Cannot read checkpoint {path}: permission denied. Make it readable "
                              "(chmod u+r) or copy it somewhere you can read.") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError, ...
        raise CheckpointError(_why_unloadable(path, e)) from None


def _why_unloadable(path, e):
    """One paragraph for a file torch.load(weights_only=True) refused (never torch's own advice to
    turn weights_only off: loading such a file could run code)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = -1
    text = str(e)
    if size == 0:
        what = "is empty (0 bytes)"
    elif "Weights only load failed" in text or "Unsupported" in text or "GLOBAL" in text:
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)) | set(re.findall(r"allowlist this global.*?\[([\w.]+)\]",
                                                                                    text)))
        found = f" ({', '.join(names[:3])})" if names else ""
        what = (f"holds objects other than tensors and plain containers{found}; loading it would run code from "
                "the file, which is refused")
    elif "central directory" in text or "zip archive" in text or isinstance(e, EOFError):
        what = "is truncated or corrupted (an incomplete copy or an interrupted write)"
    else:
        what = f"is not a PyTorch checkpoint ({type(e).__name__})"
    return (f"Cannot load checkpoint {path}: the file {what}. Use a checkpoint written by torch.save of a "
            "state_dict (or a run's checkpoints/last.pt), copied completely.")


OUR_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def is_our_temp(name, ours):
    """True when ``name`` is a temporary file that ``_atomic`` creates for a file named in ``ours``
    (a set of names, or a predicate on the name)."""
    m = OUR_TEMP.match(name)
    if not m:
        return False
    return ours(m["name"]) if callable(ours) else m["name"] in ours


def is_disk_full(e):
    return getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
