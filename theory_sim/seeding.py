"""NumPy's ``SeedSequence`` hash for many seeds at once, and PCG64 generators built from it without a SeedSequence
object per run.

Every random stream of a run is seeded from ``SeedSequence([seed, stream])`` (theory_sim.cnn.data.run_rng), and a
sweep with independent cell seeding derives each replicate's data seed from ``SeedSequence([seed, *cell_words])``.
A SeedSequence object costs ~17 us to build and hash; a sweep of 100,000 runs builds several per run. The hash
itself (Melissa O'Neill's seed_seq design, numpy/random/bit_generator.pyx) is a fixed sequence of 32-bit
multiply/xor/shift steps whose constants do not depend on the data, so it vectorises over rows of entropy words.
``generate_state`` below returns exactly what ``np.random.SeedSequence(entropy).generate_state(n, np.uint64)``
returns for each row (tests/test_seeding.py checks it against NumPy on random entropy of every length used), and
``pcg64_states`` the state ``np.random.PCG64(SeedSequence(entropy))`` starts from, so ``run_generators`` gives the
same draws as ``np.random.default_rng(SeedSequence(...))``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

_MASK32 = 0xFFFFFFFF
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = 16
_POOL_SIZE = 4
_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645   # PCG_DEFAULT_MULTIPLIER_128
_MASK128 = (1 << 128) - 1


def _words(value: int) -> list[int]:
    """A non-negative int as NumPy's SeedSequence reads it: little-endian 32-bit words, [0] for 0."""
    if value < 0:
        raise ValueError(f"seed entropy must be non-negative, got {value}")
    out = []
    while True:
        out.append(value & _MASK32)
        value >>= 32
        if not value:
            return out


def _pool(entropy: np.ndarray) -> list[np.ndarray]:
    """SeedSequence.mix_entropy for every row of ``entropy`` (N, L) uint32: the four pool words, each (N,)."""
    n, length = entropy.shape
    hash_const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_A) & _MASK32
        value = value * np.uint32(hash_const)
        return value ^ (value >> np.uint32(_XSHIFT))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = x * np.uint32(_MIX_MULT_L) - y * np.uint32(_MIX_MULT_R)
        return result ^ (result >> np.uint32(_XSHIFT))

    zero = np.zeros(n, dtype=np.uint32)
    mixer = [hashmix(entropy[:, i] if i < length else zero) for i in range(_POOL_SIZE)]
    for i_src in range(_POOL_SIZE):
        for i_dst in range(_POOL_SIZE):
            if i_src != i_dst:
                mixer[i_dst] = mix(mixer[i_dst], hashmix(mixer[i_src]))
    for i_src in range(_POOL_SIZE, length):
        for i_dst in range(_POOL_SIZE):
            mixer[i_dst] = mix(mixer[i_dst], hashmix(entropy[:, i_src]))
    return mixer


def _state_words(pool: list[np.ndarray], n_words32: int) -> np.ndarray:
    """SeedSequence.generate_state's uint32 words (N, n_words32) from the pool."""
    hash_const = _INIT_B
    out = np.empty((len(pool[0]), n_words32), dtype=np.uint32)
    for i in range(n_words32):
        value = pool[i % _POOL_SIZE] ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_B) & _MASK32
        value = value * np.uint32(hash_const)
        out[:, i] = value ^ (value >> np.uint32(_XSHIFT))
    return out


def generate_state(entropies: Sequence[Sequence[int]], n_words: int = 1) -> np.ndarray:
    """(N, n_words) uint64: ``np.random.SeedSequence(list(e)).generate_state(n_words, np.uint64)`` for every
    entropy ``e`` (a sequence of non-negative ints) of ``entropies``, computed row-vectorised."""
    if not len(entropies):
        return np.empty((0, n_words), dtype=np.uint64)
    lengths = {len(e) for e in entropies}
    if len(lengths) == 1:  # the common case: rows of equal length, every value one 32-bit word
        try:
            values = np.array(entropies, dtype=np.uint64).reshape(len(entropies), lengths.pop())
        except OverflowError:   # a value of 64 bits or more (or negative): the general path below says which
            values = None
        if values is not None and not (values >> np.uint64(32)).any():
            return _hash_rows(values.astype(np.uint32), n_words)
    rows = [[w for v in e for w in _words(int(v))] for e in entropies]
    out = np.empty((len(rows), n_words), dtype=np.uint64)
    by_length: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_length.setdefault(len(r), []).append(i)
    for length, idx in by_length.items():
        out[idx] = _hash_rows(np.array([rows[i] for i in idx], dtype=np.uint32).reshape(len(idx), length), n_words)
    return out


def _hash_rows(entropy: np.ndarray, n_words: int) -> np.ndarray:
    """generate_state(n_words, uint64) of SeedSequences whose assembled entropy words are the rows of ``entropy``."""
    words = _state_words(_pool(entropy), 2 * n_words).astype(np.uint64)
    return words[:, 0::2] | (words[:, 1::2] << np.uint64(32))   # little-endian pairs, as NumPy views them


def seed_words(entropies: Sequence[Sequence[int]]) -> list[int]:
    """``int(SeedSequence(e).generate_state(1, np.uint64)[0] >> 1)`` for every entropy: a 63-bit seed (an int64,
    and what torch.Generator.manual_seed accepts)."""
    return [int(v) for v in (generate_state(entropies, 1)[:, 0] >> np.uint64(1))]


def pcg64_states(entropies: Sequence[Sequence[int]]) -> list[dict]:
    """The ``bit_generator.state`` of ``np.random.PCG64(np.random.SeedSequence(e))`` for every entropy ``e``.

    PCG64 seeds from generate_state(4, uint64) = (s_hi, s_lo, i_hi, i_lo): inc = (i << 1) | 1, and the state is
    one LCG step from 0, plus s, and one more step (pcg64_set_seed in NumPy's pcg64.c)."""
    out = []
    for v in generate_state(entropies, 4).tolist():
        seed, seq = (v[0] << 64) | v[1], (v[2] << 64) | v[3]
        inc = ((seq << 1) | 1) & _MASK128
        state = (inc + seed) & _MASK128          # one step from 0 (0 * MULT + inc), plus the seed
        state = (state * _PCG_MULT + inc) & _MASK128
        out.append({"bit_generator": "PCG64", "state": {"state": state, "inc": inc}, "has_uint32": 0,
                    "uinteger": 0})
    return out


def run_generators(seeds: Sequence[int], stream: int) -> Iterator[np.random.Generator]:
    """For each seed in turn, a Generator drawing exactly what ``np.random.default_rng(SeedSequence([seed,
    stream]))`` draws. One Generator is re-seeded in place: use each before asking for the next."""
    gen = np.random.Generator(np.random.PCG64(0))
    for state in pcg64_states([(int(s), int(stream)) for s in seeds]):
        gen.bit_generator.state = state
        yield gen
