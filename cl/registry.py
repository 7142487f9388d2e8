"""One small registry for every kind of plugin: strategies, scenarios, models, datasets and
augmentations.

Built-in entries are *declared* by name in their package's ``__init__`` (``STRATEGIES.declare("tent",
"strategies.tent")``) and their module is imported on first use, so a run imports only what its
config names. The module itself registers the object with a decorator (``@STRATEGIES.register("tent")``),
so every name can be found with grep in both places. A user's own class is reachable without editing
the platform, in two ways:

- ``strategy.name=my_pkg.my_module:MyStrategy`` (imports and runs that module's code), or
- a Python entry point in the group ``cl.strategies`` / ``cl.scenarios`` / ``cl.models`` / ...
"""
import importlib
from importlib import metadata

from cl.errors import ConfigError, did_you_mean


class Registry:
    """Maps names to objects (classes or builder functions) of one kind."""

    def __init__(self, kind):
        self.kind = kind  # "strategy", "scenario", "model", "dataset", "augmentation"
        self._entries = {}
        self._configs = {}
        self._declared = {}   # name -> module that registers it when imported

    def declare(self, name, module):
        """A built-in entry whose ``module`` registers it on import (imported lazily by ``get``)."""
        if name in self._declared and self._declared[name] != module:
            raise ValueError(f"{self.kind} '{name}' is already declared in {self._declared[name]}")
        self._declared[name] = module

    def register(self, name, config=None):
        """Decorator: ``@STRATEGIES.register("tent")``. ``config`` is the entry's config dataclass
        (classes may instead define a ``Config`` attribute)."""

        def deco(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered by {self._entries[name]!r}")
            declared = self._declared.get(name)
            if declared is not None and declared != obj.__module__:
                raise ValueError(f"{self.kind} '{name}' is declared in {declared} but registered by {obj.__module__}")
            self._entries[name] = obj
            self._configs[name] = config if config is not None else getattr(obj, "Config", None)
            return obj

        return deco

    def names(self):
        return sorted(set(self._entries) | set(self._declared))

    def __contains__(self, name):
        return name in self._entries or name in self._declared

    def describe(self):
        """[(name, one-line description)] from each entry's docstring (imports every entry)."""
        out = []
        for name in self.names():
            doc = (self.get(name).__doc__ or "").strip().splitlines()
            out.append((name, doc[0] if doc else ""))
        return out

    def get(self, name):
        """The registered object (importing its declared module on first use), a ``module:attr``
        import, or an entry point; else a ConfigError that lists the registered names."""
        if name not in self._entries and name in self._declared:
            importlib.import_module(self._declared[name])
            if name not in self._entries:
                raise RuntimeError(f"module {self._declared[name]} did not register {self.kind} '{name}'")
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return _import_object(name, self.kind)
        for ep in _entry_points(f"cl.{self.kind}s"):
            if ep.name == name:
                return ep.load()
        raise ConfigError(
            f"Unknown {self.kind} '{name}'{did_you_mean(name, self.names())}. "
            f"Registered {self.kind}s: {', '.join(self.names())}. "
            f"A {self.kind} of your own is given as 'package.module:Name'."
        )

    def config_of(self, name):
        """The config dataclass of an entry (None when it has none)."""
        obj = self.get(name)
        if name in self._configs:
            return self._configs[name]
        return getattr(obj, "Config", None)


def _import_object(spec, kind):
    """``module:attr`` -> the object; any failure (not importable, an error raised while importing
    it, no such attribute, not a class or function) is a ConfigError naming the module."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"Cannot import module '{module_name}' for {kind} '{spec}': {e}. "
                          "Is it installed or on PYTHONPATH?") from None
    except SyntaxError as e:
        raise ConfigError(f"Module '{module_name}' (for {kind} '{spec}') has a syntax error at {e.filename}:{e.lineno}: "
                          f"{e.msg}. Fix the module.") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while it was imported
        raise ConfigError(f"Importing module '{module_name}' (for {kind} '{spec}') raised {type(e).__name__}: {e}. "
                          "Fix the module (run `python -c 'import " + module_name + "'` to see the traceback).") \
            from None
    if not attr or not hasattr(module, attr):
        raise ConfigError(f"Module '{module_name}' has no attribute '{attr}' (from {kind} '{spec}'). Give it as "
                          "'package.module:ClassName'.")
    obj = getattr(module, attr)
    need_class = kind == "strategy"
    if (need_class and not isinstance(obj, type)) or not callable(obj):
        what = "a class" if need_class else "a class or function"
        raise ConfigError(f"'{spec}' is a {type(obj).__name__}, not {what}: a {kind} given as 'module:Name' must "
                          f"name {what} ({'a subclass of cl.strategy.Strategy' if kind == 'strategy' else 'its builder'}).")
    if kind == "strategy":
        from cl.strategy import Strategy
        if not issubclass(obj, Strategy):
            raise ConfigError(f"'{spec}' is not a subclass of cl.strategy.Strategy; a strategy class must derive from it.")
    return obj


def _entry_points(group):
    try:
        return list(metadata.entry_points(group=group))
    except TypeError:  # Python < 3.10
        return list(metadata.entry_points().get(group, []))


STRATEGIES = Registry("strategy")
SCENARIOS = Registry("scenario")
MODELS = Registry("model")
DATASETS = Registry("dataset")
AUGMENTATIONS = Registry("augmentation")


def load_builtins():
    """Import the built-in plugin packages so their declarations run (explicit, no scanning; the
    plugin modules themselves are imported on first use)."""
    import cl.models  # noqa: F401
    import scenarios  # noqa: F401
    import strategies  # noqa: F401
