"""The vectorised SeedSequence hash and PCG64 seeding (theory_sim.seeding) against NumPy itself: the oracle is
``np.random.SeedSequence`` / ``np.random.default_rng``, on random entropy of every shape the package uses."""
import numpy as np
import pytest

from theory_sim.cnn.data import LABELS
from theory_sim.seeding import generate_state, pcg64_states, run_generators, seed_words


def _entropies(rng: np.random.Generator) -> list[tuple[int, ...]]:
    small = [(int(s), int(t)) for s, t in zip(rng.integers(0, 2**32, 40), rng.integers(0, 6, 40))]
    big = [(int(s), 4) for s in rng.integers(2**32, 2**63, 40)]                      # data seeds: 63-bit
    cells = [tuple(int(x) for x in rng.integers(0, 2**32, 5)) for _ in range(20)]   # seed + a cell's 4 words
    edge = [(0, 0), (0,), (2**32 - 1, 2**32), (2**64 + 3, 1), (1, 2, 3, 4, 5, 6, 7, 8, 9), (2**63 - 1, 0)]
    return small + big + cells + edge


def test_generate_state_equals_numpy_for_every_entropy_shape():
    ents = _entropies(np.random.default_rng(0))
    for n_words in (1, 2, 4):
        ours = generate_state(ents, n_words)
        ref = np.array([np.random.SeedSequence(list(e)).generate_state(n_words, np.uint64) for e in ents])
        assert ours.dtype == np.uint64 and (ours == ref).all()
    # mixed lengths in one call take the general path, equal lengths with 64-bit values too
    assert (generate_state([(1, 2), (3,), (2**40, 1)], 1)[:, 0] ==
            [np.random.SeedSequence(e).generate_state(1, np.uint64)[0] for e in ([1, 2], [3], [2**40, 1])]).all()
    assert generate_state([], 2).shape == (0, 2)


def test_seed_words_are_the_63_bit_seeds_the_package_derived_before():
    ents = _entropies(np.random.default_rng(1))
    assert seed_words(ents) == [int(np.random.SeedSequence(list(e)).generate_state(1, np.uint64)[0] >> 1)
                                for e in ents]


def test_negative_entropy_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        generate_state([(-1, 2)])


def test_pcg64_states_and_generators_draw_what_default_rng_draws():
    ents = [(int(s), 3) for s in np.random.default_rng(2).integers(0, 2**63, 25)] + [(0, 0), (7, 1)]
    for e, state in zip(ents, pcg64_states(ents)):
        assert np.random.PCG64(np.random.SeedSequence(list(e))).state == state
    seeds = [e[0] for e in ents]
    for seed, gen in zip(seeds, run_generators(seeds, 3)):
        ref = np.random.default_rng(np.random.SeedSequence([seed, 3]))
        # every kind of draw the package makes, interleaved as in data.generate
        assert (gen.choice([-1.0, 1.0], size=7) == ref.choice([-1.0, 1.0], size=7)).all()
        # data.generate draws the labels as LABELS[integers(0, 2)]: what choice(LABELS) draws, state included
        assert (LABELS[gen.integers(0, 2, size=20)] == ref.choice([-1.0, 1.0], size=20)).all()
        assert (gen.random(5) == ref.random(5)).all()
        assert (gen.integers(0, 3, size=9) == ref.integers(0, 3, size=9)).all()
        assert (gen.standard_normal((2, 3)) == ref.standard_normal((2, 3))).all()
        assert (gen.uniform(-1, 1, size=4) == ref.uniform(-1, 1, size=4)).all()
        assert gen.bit_generator.state == ref.bit_generator.state
