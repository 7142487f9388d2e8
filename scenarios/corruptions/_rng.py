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


# --------------------------------------------------------------------------
# Stream version 1: numpy.random.default_rng([seed, crc32(name), severity, index])
# --------------------------------------------------------------------------
#
# ``default_rng(key)`` hashes ``key`` with a ``SeedSequence`` (pool of 4 uint32 words), asks it for
# 4 uint64 words and seeds a PCG64 with them; about 13 us per image, most of it in Python. The
# hashing below is numpy's documented SeedSequence algorithm (O'Neill's seed_seq hash) on uint32
# arrays, for all the images at once; each image's PCG64 is then seeded from its 4 words through
# a minimal ``ISeedSequence``, so ``Generator(PCG64(_Words(w)))`` is the generator ``default_rng(key)``
# returns (same state, same draws; ``tests/test_corruption_fast_paths.py`` compares the states).

_SS_INIT_A, _SS_MULT_A = 0x43B0D7E5, 0x931E8875
_SS_INIT_B, _SS_MULT_B = 0x8B51F9DD, 0x58F38DED
_SS_MIX_L, _SS_MIX_R = 0xCA01F9DD, 0x4973F715
_U32 = 0xFFFFFFFF


def _int_words(v: int) -> list:
    """The uint32 words SeedSequence makes of a non-negative int (little end first; 0 -> [0])."""
    out = [v & _U32]
    v >>= 32
    while v:
        out.append(v & _U32)
        v >>= 32
    return out


def _hashmix(value: np.ndarray, const: int):
    """SeedSequence's hashmix of uint32 ``value`` with the running constant; returns (value, next const)."""
    value = value ^ np.uint32(const)
    const = (const * _SS_MULT_A) & _U32
    value *= np.uint32(const)
    value ^= value >> np.uint32(16)
    return value, const


def _mix32(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = x * np.uint32(_SS_MIX_L) - y * np.uint32(_SS_MIX_R)
    r ^= r >> np.uint32(16)
    return r


def seed_sequence_words(entropy: np.ndarray) -> np.ndarray:
    """[N, 4] uint64: ``SeedSequence(key).generate_state(4, np.uint64)`` for every row ``key`` of
    the uint32 word matrix ``entropy`` [N, L] (the keys' words as SeedSequence assembles them)."""
    e = np.ascontiguousarray(entropy, dtype=np.uint32)
    n, length = e.shape
    zero = np.zeros(n, dtype=np.uint32)
    with np.errstate(over="ignore"):
        const = _SS_INIT_A
        pool = []
        for i in range(4):
            v, const = _hashmix(e[:, i] if i < length else zero, const)
            pool.append(v)
        for src in range(4):
            for dst in range(4):
                if src != dst:
                    h, const = _hashmix(pool[src], const)
                    pool[dst] = _mix32(pool[dst], h)
        for src in range(4, length):
            for dst in range(4):
                h, const = _hashmix(e[:, src], const)
                pool[dst] = _mix32(pool[dst], h)
        out = np.empty((n, 8), dtype=np.uint32)
        const = _SS_INIT_B
        for i in range(8):
            v = pool[i % 4] ^ np.uint32(const)
            const = (const * _SS_MULT_B) & _U32
            v *= np.uint32(const)
            v ^= v >> np.uint32(16)
            out[:, i] = v
    return out.astype("<u4").view("<u8").astype(np.uint64)


class _Words(np.random.bit_generator.ISeedSequence):
    """A seed sequence that hands out precomputed uint64 words (what PCG64 asks for)."""

    __slots__ = ("words",)

    def __init__(self, words):
        self.words = words

    def generate_state(self, n_words, dtype=np.uint32):
        if n_words != len(self.words) or np.dtype(dtype) != np.uint64:     # pragma: no cover
            raise ValueError("precomputed seed words do not match the request")
        return self.words.copy()


def default_rngs(key: Sequence[int], indices: Sequence[int]) -> list:
    """``[numpy.random.default_rng([*key, i]) for i in indices]`` (non-negative ints), with the
    seed hashing vectorised over the images (the same generators, ~4x faster to make)."""
    idx = [int(i) for i in indices]
    if not idx:
        return []
    head = [w for k in key for w in _int_words(int(k))]
    if min(idx) < 0 or max(idx) > _U32 or any(int(k) < 0 for k in key):
        return [np.random.default_rng([*key, i]) for i in idx]
    ent = np.empty((len(idx), len(head) + 1), dtype=np.uint32)
    ent[:, :-1] = head
    ent[:, -1] = idx
    words = seed_sequence_words(ent)
    return [np.random.Generator(np.random.PCG64(_Words(w))) for w in words]
