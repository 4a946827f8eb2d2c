"""training.order: the lazily evaluated seeded permutation and the global-batch sampler built on it.

Oracles: sorting the images of all positions (a bijection of [0, n) sorts to arange(n)); chi-square quantiles from
scipy.stats for the uniformity of a random permutation's positions and of whole small permutations; the variance
1/(n-1) of Spearman's rank correlation and the Poisson(1) law of fixed points of a uniformly random permutation.
"""

import itertools
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2, poisson

from training.data import DataValidationError
from training.order import GlobalBatchSampler, SeededPermutation

PRIMES = [2, 3, 5, 7, 11, 13, 61, 67, 127, 257, 1009, 7919, 65537]
POWERS_OF_TWO_AND_NEIGHBOURS = sorted({2**k + d for k in range(1, 17) for d in (-1, 0, 1)})
SIZES = sorted(set(range(1, 71)) | set(PRIMES) | set(POWERS_OF_TWO_AND_NEIGHBOURS) | {1000, 12345})
SEEDS = [0, 1, 7, 2**40 + 3, -5]


def chi_square(observed, expected) -> float:
    observed, expected = np.asarray(observed, dtype=float), np.asarray(expected, dtype=float)
    return float(((observed - expected) ** 2 / expected).sum())


# --- SeededPermutation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_every_size_is_a_bijection(seed):
    for n in SIZES:
        images = SeededPermutation(n, seed)[np.arange(n)]
        assert images.dtype == np.int64
        assert np.array_equal(np.sort(images), np.arange(n)), f"n={n} seed={seed} is not a permutation"


def test_scalar_slice_and_vector_evaluation_agree():
    for n in (1, 3, 64, 65, 1000, 12345):
        perm = SeededPermutation(n, seed=11)
        positions = np.arange(n)
        vector = perm[positions]
        assert [perm(i) for i in range(n)] == vector.tolist()
        assert [perm[i] for i in range(0, n, 7)] == vector[::7].tolist()
        assert np.array_equal(perm[:], vector)
        assert np.array_equal(perm[2:n:3], vector[2::3])
        shuffled = np.random.default_rng(n).permutation(n).reshape(-1, 1)  # any order and shape, repeats allowed
        assert np.array_equal(perm[shuffled], vector[shuffled])
        assert np.array_equal(perm[np.concatenate([positions, positions])], np.concatenate([vector, vector]))
        assert type(perm(n - 1)) is int and len(perm) == n


def test_different_seeds_give_different_orders():
    for n in (10, 1000, 65537):
        orders = {tuple(SeededPermutation(n, seed)[:].tolist()) for seed in range(20)}
        assert len(orders) == 20


def test_two_to_the_forty_rows_map_sampled_positions_into_range_without_collisions():
    for n in (2**40, 2**40 - 1, 2**40 + 1):
        rng = np.random.default_rng(n % 1000)
        positions = np.unique(np.concatenate([rng.integers(0, n, 5000), [0, 1, n - 2, n - 1]]))
        images = SeededPermutation(n, seed=3)[positions]
        assert images.min() >= 0 and images.max() < n
        assert np.unique(images).size == positions.size
        assert SeededPermutation(n, seed=3)(n - 1) == images[-1]


def test_first_position_is_uniform_over_seeds():
    n, seeds = 10, 2000
    counts = np.bincount([SeededPermutation(n, seed)(0) for seed in range(seeds)], minlength=n)
    assert chi_square(counts, np.full(n, seeds / n)) < chi2.ppf(0.999, df=n - 1)


@pytest.mark.parametrize("n, seeds", [(3, 600), (4, 2400)])  # 100 seeds expected per order
def test_whole_small_permutations_are_uniform_over_seeds(n, seeds):
    # Every one of the n! orders, not just one position: catches networks that reach only some permutations.
    counts = Counter(tuple(SeededPermutation(n, seed)[:].tolist()) for seed in range(seeds))
    orders = list(itertools.permutations(range(n)))
    assert set(counts) == set(orders)
    observed = [counts[order] for order in orders]
    assert chi_square(observed, np.full(len(orders), seeds / len(orders))) < chi2.ppf(0.999, df=len(orders) - 1)


def test_pairs_of_positions_are_uniform_over_seeds():
    n, seeds = 6, 1500
    counts = Counter(tuple(SeededPermutation(n, seed)[[0, 1]].tolist()) for seed in range(seeds))
    cells = [(a, b) for a in range(n) for b in range(n) if a != b]
    assert set(counts) == set(cells)
    observed = [counts[cell] for cell in cells]
    assert chi_square(observed, np.full(len(cells), seeds / len(cells))) < chi2.ppf(0.999, df=len(cells) - 1)


@pytest.mark.parametrize("n", [2**20, 2**20 + 1, 1_000_003])
def test_large_orders_keep_no_trace_of_position(n):
    # For a uniform permutation Spearman's rho between two rank sequences has mean 0 and variance 1/(n-1):
    # neither the position nor the neighbour's image may predict an image beyond 5 standard deviations.
    bound = 5 / np.sqrt(n - 1)
    for seed in (0, 1):
        images = SeededPermutation(n, seed)[:].astype(np.float64)
        assert abs(np.corrcoef(np.arange(n), images)[0, 1]) < bound
        assert abs(np.corrcoef(images[:-1], images[1:])[0, 1]) < bound
        assert abs(np.corrcoef(np.arange(n) % 2, images % 2)[0, 1]) < bound  # low bits do not follow


def test_fixed_points_follow_the_poisson_law():
    # A uniform permutation has about Poisson(1) fixed points, so their sum over independent seeds is Poisson(seeds).
    n, seeds = 5003, 200
    fixed = sum(int((SeededPermutation(n, seed)[:] == np.arange(n)).sum()) for seed in range(seeds))
    assert poisson.ppf(0.0005, seeds) <= fixed <= poisson.ppf(0.9995, seeds)


def test_invalid_sizes_and_indices_raise():
    with pytest.raises(ValueError):
        SeededPermutation(0, seed=0)
    with pytest.raises(ValueError):
        SeededPermutation(2**63, seed=0)
    perm = SeededPermutation(10, seed=0)
    for bad in (-1, 10):
        with pytest.raises(IndexError):
            perm(bad)
        with pytest.raises(IndexError):
            perm[np.array([0, bad])]
    with pytest.raises(TypeError):
        perm[np.array([0.5])]
    assert perm[np.array([], dtype=np.int64)].shape == (0,)


# --- GlobalBatchSampler ---------------------------------------------------------------------------------------


def take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


@pytest.mark.parametrize("rows, batch", [(32, 8), (30, 8), (1000, 7)])
def test_every_kept_row_once_per_epoch_remainder_dropped(rows, batch):
    steps = rows // batch
    batches = take(GlobalBatchSampler(rows, batch, seed=5, rank=0, world_size=1), 3 * steps)
    for epoch in range(3):
        pairs = [pair for b in batches[epoch * steps : (epoch + 1) * steps] for pair in b]
        seen = [row for row, _ in pairs]
        assert all(type(row) is int and 0 <= row < rows for row in seen)
        assert len(seen) == steps * batch == len(set(seen))
        assert {e for _, e in pairs} == {epoch}
        if rows % batch == 0:
            assert sorted(seen) == list(range(rows))
    assert len(GlobalBatchSampler(rows, batch, 5, 0, 1)) == steps
    assert GlobalBatchSampler(rows, batch, 5, 0, 1).steps_per_epoch == steps


def test_epochs_are_reshuffled():
    rows, batch = 64, 16
    batches = take(GlobalBatchSampler(rows, batch, seed=0, rank=0, world_size=1), 4 * 4)
    epochs = [[row for b in batches[e * 4 : (e + 1) * 4] for row, _ in b] for e in range(4)]
    assert len({tuple(order) for order in epochs}) == 4


@pytest.mark.parametrize("world_size", [2, 4])
def test_process_shares_concatenate_to_the_single_process_batch(world_size):
    rows, batch, steps = 103, 12, 25  # 8 steps per epoch: crosses three epoch boundaries
    single = take(GlobalBatchSampler(rows, batch, seed=9, rank=0, world_size=1), steps)
    shares = [take(GlobalBatchSampler(rows, batch, seed=9, rank=r, world_size=world_size), steps)
              for r in range(world_size)]
    for step in range(steps):
        assert [pair for share in shares for pair in share[step]] == single[step]
        assert all(len(share[step]) == batch // world_size for share in shares)


def test_resuming_from_any_step_matches_the_uninterrupted_run():
    rows, batch, steps = 30, 8, 13  # 3 steps per epoch
    uninterrupted = take(GlobalBatchSampler(rows, batch, seed=3, rank=1, world_size=2), steps)
    for start in range(steps):
        resumed = GlobalBatchSampler(rows, batch, seed=3, rank=1, world_size=2, start_step=start)
        assert take(resumed, steps - start) == uninterrupted[start:]
    assert [b[0][1] for b in uninterrupted] == [step // 3 for step in range(steps)]


def test_sampler_serves_two_to_the_forty_rows():
    # A sampler that materialised the order would need 8 TiB here.
    rows, batch = 2**40, 64
    sampler = GlobalBatchSampler(rows, batch, seed=1, rank=0, world_size=1, start_step=rows // batch - 1)
    last_of_epoch_0, first_of_epoch_1 = take(sampler, 2)
    for batch_rows, epoch in ((last_of_epoch_0, 0), (first_of_epoch_1, 1)):
        assert len({row for row, _ in batch_rows}) == batch
        assert all(0 <= row < rows and e == epoch for row, e in batch_rows)


def test_sampler_errors_match_the_contract():
    with pytest.raises(ValueError, match="not a multiple of 3 processes"):
        GlobalBatchSampler(30, 8, seed=0, rank=0, world_size=3)
    with pytest.raises(DataValidationError, match="fewer than one global batch of 8"):
        GlobalBatchSampler(7, 8, seed=0, rank=0, world_size=1)
