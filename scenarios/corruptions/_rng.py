"""Per-image random streams for :mod:`scenarios.corruptions`.

Every image gets its own stream, keyed by ``(seed, corruption, severity, index)``, so an
image's corruption does not depend on the batch it is processed in.  A stream is an SFC64
generator whose initial state is a splitmix64 hash of the key (computed for the whole batch
at once, in numpy); :class:`ImageRNG` exposes it with the ``numpy.random.Generator``
methods the corruptions use (``normal``, ``uniform``, ``integers``, ``poisson``,
``random``) plus :meth:`ImageRNG.raw` (raw 64-bit words), which the batched fast paths of
the noise corruptions read.  The generator state lives in the object; one shared
``SFC64`` per thread does the drawing (setting its state costs ~1 us, constructing a
seeded generator ~10 us).

``STREAM_VERSION`` names the mapping from a key to random numbers: it changes whenever a
given seed produces different corruptions, so that caches of generated data can tell
versions apart.  Version 1 (up to 2026-12-01): ``numpy.random.default_rng([seed, crc32(name),
severity, index])`` and float64 draws; version 2: these SFC64 streams and the fast paths, for the
four noise corruptions (the others keep version 1 streams).
"""
from __future__ import annotations

import ctypes
import threading
import zlib
from typing import Sequence

import numpy as np

STREAM_VERSION = 2

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (bijective 64-bit hash), elementwise on uint64 arrays."""
    z = z.copy()
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def stream_states(seed: int, name: str, severity: int, indices: Sequence[int]) -> np.ndarray:
    """[N, 4] uint64 SFC64 states (a, b, c, counter) of the images ``indices``."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        mask = 0xFFFFFFFFFFFFFFFF
        h = _mix(np.full(1, np.uint64(int(seed) & mask)) + _GOLDEN)
        h = _mix(h ^ np.uint64((int(seed) >> 64) & mask))
        h = _mix(h ^ np.uint64(zlib.crc32(name.encode())))
        h = _mix(h ^ np.uint64(int(severity)))
        h = _mix(h + idx * _GOLDEN)                       # one word per image
        out = np.empty((len(idx), 4), dtype=np.uint64)
        out[:, 0] = _mix(h ^ np.uint64(1))
        out[:, 1] = _mix(h ^ np.uint64(2))
        out[:, 2] = _mix(h ^ np.uint64(3))
        out[:, 3] = 1
    return out


class _Shared(threading.local):
    """One SFC64 per thread that draws for every stream; ``words`` is a numpy view of its
    four state words (through the bit generator's public ctypes interface), so a stream is
    swapped in and out with two 32-byte copies."""

    def __init__(self):
        self.bitgen = np.random.SFC64(0)
        self.gen = np.random.Generator(self.bitgen)
        try:
            addr = self.bitgen.ctypes.state_address
            self.words = np.ctypeslib.as_array((ctypes.c_uint64 * 4).from_address(addr))
            self.words[:] = self.bitgen.state["state"]["state"]          # check it is the state
            probe = self.bitgen.state["state"]["state"]
            if not np.array_equal(probe, self.words):
                self.words = None
        except Exception:                                               # pragma: no cover
            self.words = None


_SHARED = _Shared()


class ImageRNG:
    """One image's random stream (numpy-Generator-like; see the module docstring)."""

    __slots__ = ("_words", "_has32", "_u32")

    def __init__(self, state_words):
        self._words = np.array(state_words, dtype=np.uint64)
        self._has32 = 0
        self._u32 = 0

    def _call(self, method: str, *args, **kwargs):
        sh = _SHARED
        sh.bitgen.state = {"bit_generator": "SFC64", "state": {"state": self._words},
                           "has_uint32": self._has32, "uinteger": self._u32}
        out = getattr(sh.gen, method)(*args, **kwargs)
        st = sh.bitgen.state
        self._words = st["state"]["state"]
        self._has32, self._u32 = st["has_uint32"], st["uinteger"]
        return out

    def raw(self, n: int) -> np.ndarray:
        """``n`` raw uint64 words of this stream."""
        return raw_words([self], n)[0]

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._call("normal", loc, scale, size)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._call("uniform", low, high, size)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return self._call("integers", low, high, size, dtype, endpoint)

    def poisson(self, lam=1.0, size=None):
        return self._call("poisson", lam, size)

    def random(self, size=None, dtype=np.float64):
        return self._call("random", size, dtype)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._call("standard_normal", size, dtype)


def image_rngs(seed: int, name: str, severity: int, indices: Sequence[int]) -> list:
    """One :class:`ImageRNG` per image, keyed by (seed, name, severity, index)."""
    return [ImageRNG(s) for s in stream_states(seed, name, severity, indices)]


def all_fast(rngs) -> bool:
    """True when every stream is an :class:`ImageRNG` (batched fast paths allowed)."""
    return rngs is not None and all(type(r) is ImageRNG for r in rngs)


def raw_words(rngs: Sequence[ImageRNG], n: int) -> np.ndarray:
    """[N, n] uint64: the next ``n`` raw words of every image's stream (a buffered half word
    of a previous 32-bit draw is kept for that draw's successors, as numpy does)."""
    out = np.empty((len(rngs), n), dtype=np.uint64)
    sh = _SHARED
    bg, words = sh.bitgen, sh.words
    if words is None:                                                   # pragma: no cover
        for k, r in enumerate(rngs):
            bg.state = {"bit_generator": "SFC64", "state": {"state": r._words},
                        "has_uint32": r._has32, "uinteger": r._u32}
            out[k] = bg.random_raw(n)
            r._words = bg.state["state"]["state"]
        return out
    for k, r in enumerate(rngs):
        words[:] = r._words
        out[k] = bg.random_raw(n)
        r._words[:] = words
    return out
