"""Fail points for fault-injection tests: kill the process (SIGKILL) at a named point.

Enabled only by the environment variable ``CL_FAILPOINT=<name>[@<k>]`` (the k-th time the point
is reached, default 1). Points: ``step`` (after a training/adaptation step), ``write:<file name>``
(an atomic write half done: the temporary file partly written, not yet renamed; e.g.
``write:last.pt`` or ``write:results.json``), ``experience`` (between experiences, after the
checkpoint), ``folder:staged`` / ``folder:created`` (a new run folder: its hidden staging copy
holds the marker only / it was just renamed into place, see cl/rundir.py). With the variable unset, each point costs one attribute check.
"""
import os
import signal

_SPEC = os.environ.get("CL_FAILPOINT", "")
ENABLED = bool(_SPEC)
_NAME, _, _K = _SPEC.partition("@")
_COUNT = {"n": 0}


def fires(name):
    """True when ``name`` is the armed point and this is its k-th hit."""
    if not ENABLED or name != _NAME:
        return False
    _COUNT["n"] += 1
    return _COUNT["n"] == int(_K or 1)


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


def hit(name):
    """Kill this process if ``name`` fires."""
    if ENABLED and fires(name):
        kill()
