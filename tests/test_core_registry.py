import sys
import textwrap

import pytest
import torch

from cl.cli import main
from conftest import QUICKSTART
from cl.errors import ConfigError
from cl.registry import Registry


def test_duplicate_registration_is_an_error():
    reg = Registry("thing")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(object)


def test_failed_lookup_lists_names():
    reg = Registry("thing")
    reg.register("alpha")(object)
    with pytest.raises(ConfigError, match="Registered things: alpha"):
        reg.get("beta")


def test_user_strategy_from_own_module(tmp_path, monkeypatch, quick):
    """A strategy defined in the user's own module runs without editing the platform, and what it
    freezes stays frozen while the rest trains."""
    (tmp_path / "my_plugins").mkdir()
    (tmp_path / "my_plugins" / "__init__.py").write_text("")
    (tmp_path / "my_plugins" / "frozen_head.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from cl.config import StrategyConfig
        from cl.strategy import Strategy

        @dataclass
        class FrozenHeadConfig(StrategyConfig):
            name: str = "my_plugins.frozen_head:FrozenHead"
            calls: int = 0

        class FrozenHead(Strategy):
            '''Trains everything but the last layer.'''
            Config = FrozenHeadConfig
            steps = 0
            head, start, end, optimized = set(), {}, {}, set()

            def configure_model(self):
                last = list(self.model.children())[-1]
                for p in last.parameters():
                    p.requires_grad_(False)
                ids = {id(p) for p in last.parameters()}
                FrozenHead.head = {n for n, p in self.model.named_parameters() if id(p) in ids}
                FrozenHead.start = {n: p.detach().clone() for n, p in self.model.named_parameters()}

            def after_step(self, batch):
                FrozenHead.steps += 1
                FrozenHead.end = {n: p.detach().clone() for n, p in self.model.named_parameters()}
                held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
                FrozenHead.optimized = {n for n, p in self.model.named_parameters() if id(p) in held}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["run", QUICKSTART, "strategy.name=my_plugins.frozen_head:FrozenHead",
                 "strategy.epochs=1", "strategy.calls=2"] + quick())
    assert code == 0
    from my_plugins.frozen_head import FrozenHead
    assert FrozenHead.steps > 0 and FrozenHead.head
    for name in FrozenHead.head:                             # the frozen head did not move ...
        assert torch.equal(FrozenHead.end[name], FrozenHead.start[name]), name
    assert not FrozenHead.head & FrozenHead.optimized        # ... and is not in the optimizer
    others = set(FrozenHead.start) - FrozenHead.head
    assert others and any(not torch.equal(FrozenHead.end[n], FrozenHead.start[n]) for n in others)  # the rest trained
    sys.modules.pop("my_plugins.frozen_head", None)


def test_cl_list_prints_names(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("finetune", "joint", "class_split", "mlp", "digits"):
        assert name in out
