"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""
import difflib
import os


class ClError(Exception):
    """An error caused by the user's input; its message says what is wrong and how to fix it."""


class ConfigError(ClError):
    """Bad configuration: unknown key, wrong type, missing or invalid value."""


class DataError(ClError):
    """A dataset that cannot be found or used."""


class CheckpointError(ClError):
    """A checkpoint that cannot be loaded into the model."""


class OutputError(ClError):
    """A file of the run could not be written (disk full, read-only folder); the previous version
    of that file is kept. The CLI adds what was saved and how to resume."""

    def __init__(self, message, path=None, disk_full=False):
        super().__init__(message)
        self.path, self.disk_full = path, disk_full

    @classmethod
    def of(cls, path, e):
        """The OutputError for an OSError ``e`` raised while writing ``path``."""
        import errno
        folder = os.path.dirname(os.path.abspath(path))
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return cls(f"Cannot write {path}: the disk is full ({e.strerror}); that file keeps its previous "
                       "version. Free some space.", path, disk_full=True)
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return cls(f"Cannot write {path}: {e.strerror}. Make {folder} writable (chmod u+w) or copy the "
                       "run folder somewhere writable.", path)
        return cls(f"Cannot write {path}: {e.strerror or e}. Check that {folder} is a writable folder.", path)


class NonFiniteLossError(ClError):
    """The loss became NaN or infinite; the run stops with the partial results saved."""


def did_you_mean(name, choices):
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_paragraph(text):
    """``text`` as one paragraph: blank lines and line breaks folded into spaces (tracebacks and
    multi-line library messages quoted inside our errors stay readable on one screen line)."""
    return " ".join(str(text).split())
