"""Dependencies point one way and plugins load lazily: a run imports only the plugins its config names."""
import json
import subprocess
import sys

from conftest import QUICKSTART, REPO

PROBE = """
import json, sys
from cl.config import load_config
from cl.runner import build
build(load_config({path!r}, {overrides!r}))
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('strategies', 'scenarios', 'cl', 'torchvision', 'timm'))))
"""


def imported(overrides=()):
    out = subprocess.run([sys.executable, "-c", PROBE.format(path=QUICKSTART, overrides=list(overrides))],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_quickstart_imports_only_the_plugins_it_names():
    mods = imported()
    assert {m for m in mods if m.startswith("strategies.")} == {"strategies.finetune"}
    assert {m for m in mods if m.startswith("cl.models.")} == {"cl.models._build", "cl.models.small"}
    assert "scenarios.class_split" in mods and "scenarios.corruption_stream" not in mods
    assert not {m for m in mods if m.split(".")[0] in ("torchvision", "timm")}
    # the core never imports plugin code or method-family helpers
    assert not {m for m in mods if m.startswith("strategies._")}


def test_another_strategy_imports_that_one():
    mods = imported(["strategy.name=er"])
    assert {m for m in mods if m.startswith("strategies.")} == {"strategies.er"}


def test_core_modules_do_not_import_plugins():
    """Plugins depend on the core, never the reverse (checked on the source text)."""
    import pathlib
    bad = []
    for path in pathlib.Path(REPO, "cl").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("from strategies", "import strategies", "from scenarios", "import scenarios")):
                if path.name != "registry.py":        # load_builtins imports the declaration tables
                    bad.append(f"{path.relative_to(REPO)}: {s}")
    assert not bad, bad
