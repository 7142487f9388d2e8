"""Token streams: windows, random passes, fixed evaluation grid, subsets, mixtures with known counts."""
import numpy as np
import pytest
import torch

from cl.data import Batch
from cl.tokens import MixedTokens, TokenData, apportion, mean_token_loss, token_cross_entropy


def stream(n=1000, ctx=8):
    return TokenData(torch.arange(n) % 251, ctx, vocab_size=256, name="d")


def test_windows_are_shifted_by_one_and_fixed_grid_in_order():
    d = stream(100, 8)
    assert len(d) == 12 and d.num_batches(5) == 3            # (100 - 1) // 8 windows
    batches = list(d.batches(5))
    assert [len(b.x) for b in batches] == [5, 5, 2]
    b = batches[0]
    assert isinstance(b, Batch) and b.x.dtype == torch.long and b.x.shape == (5, 8)
    assert torch.equal(b.x[1], torch.arange(8, 16)) and torch.equal(b.y[1], torch.arange(9, 17))
    starts = torch.cat([b.x[:, 0] for b in batches])
    assert torch.equal(starts, torch.arange(12) * 8)           # same windows on every call
    assert torch.equal(torch.cat([b.x for b in d.batches(5)]), torch.cat([b.x for b in batches]))


def test_random_pass_covers_every_window_of_a_shifted_grid_once_and_is_seeded():
    d = TokenData(torch.arange(1011), 10).with_windows(100)   # grid of 100 or 101 windows per phase
    x1 = torch.cat([b.x for b in d.batches(7, shuffle=True, generator=torch.Generator().manual_seed(0))])
    x2 = torch.cat([b.x for b in d.batches(7, shuffle=True, generator=torch.Generator().manual_seed(0))])
    x3 = torch.cat([b.x for b in d.batches(7, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    starts = x1[:, 0]
    phase = int(starts.min()) % 10
    assert len(starts) == len(d) == 100
    assert set((starts % 10).tolist()) == {phase}              # one grid ...
    assert len(set(starts.tolist())) == len(starts)            # ... each window once (no replacement)
    assert not torch.equal(starts, starts.sort().values)       # in a random order


def test_budget_larger_than_stream_chains_passes_and_subset_is_fixed():
    d = stream(81, 8).with_windows(25)                         # 10 windows per pass -> 2.5 passes
    x = torch.cat([b.x for b in d.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3))])
    assert len(x) == 25
    first = x[:10, 0] if d.grid_size(int(x[0, 0]) % 8) == 10 else x[:9, 0]
    assert len(set(first.tolist())) == len(first)               # the first pass has no repeats
    sub = stream(100, 8).subset([3, 1])
    assert len(sub) == 2 and torch.equal(next(sub.batches(8)).x[:, 0], torch.tensor([24, 8]))
    assert stream().with_transform(None) is not None
    with pytest.raises(ValueError):
        stream().with_transform(lambda x, g: x)
    with pytest.raises(ValueError, match="fewer than one window"):
        TokenData(torch.arange(8), 8)


def test_concat_is_the_union():
    a, b = stream(101, 10), TokenData(torch.arange(51) + 300, 10, vocab_size=400)
    u = TokenData.concat([a, b])
    assert len(u) == len(a) + len(b) and u.num_tokens == 152 and u.vocab_size == 400


def test_apportion_tracks_fractions_exactly():
    carry = np.zeros(2)
    counts = [apportion([0.95, 0.05], 16, carry) for _ in range(20)]
    replay = [int(c[1]) for c in counts]
    assert all(int(c.sum()) == 16 for c in counts)
    assert replay[:5] == [1, 1, 0, 1, 1] and sum(replay[:5]) == 4 and sum(replay) == 16   # 5% of 320
    carry = np.zeros(3)
    total = sum(apportion([0.5, 0.25, 0.25], 10, carry) for _ in range(8))
    assert total.tolist() == [40, 20, 20]
    carry = np.zeros(2)
    assert apportion([1.0, 0.0], 5, carry).tolist() == [5, 0]


def test_mixed_tokens_counts_groups_and_pure_source_equals_plain_batches():
    a = stream(2000, 8)
    b = TokenData(torch.arange(2000) % 7 + 500, 8, vocab_size=600)
    seen = []
    mix = MixedTokens([a, b], lambda step: [0.75, 0.25], num_windows=40, groups=[0, 1],
                      on_counts=lambda s, c: seen.append(c.tolist()))
    batches = list(mix.batches(8, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 5 and seen == [[6, 2]] * 5
    for bt in batches:
        assert bt.g.tolist() == [0] * 6 + [1] * 2
        assert (bt.x[6:] >= 500).all() and (bt.x[:6] < 500).all()
    pure = MixedTokens([a, b], lambda step: [1.0, 0.0], num_windows=len(a))
    x_mix = torch.cat([bt.x for bt in pure.batches(16, generator=torch.Generator().manual_seed(5))])
    x_plain = torch.cat([bt.x for bt in a.batches(16, shuffle=True, generator=torch.Generator().manual_seed(5))])
    assert torch.equal(x_mix, x_plain)


def test_token_cross_entropy_and_mean_token_loss_known_values():
    logits = torch.zeros(2, 3, 4)                               # uniform over 4 tokens
    y = torch.zeros(2, 3, dtype=torch.long)
    assert token_cross_entropy(logits, y).item() == pytest.approx(np.log(4))

    class Uniform:
        def predict_data(self, data, bs, device):
            for b in data.batches(bs):
                yield torch.zeros(*b.x.shape, 256), b.y
    assert mean_token_loss(Uniform(), stream(200, 8), 4, "cpu", 256) == pytest.approx(np.log(256))
