"""The counter-based dropout RNG: NumPy vectorised code against a plain-integer re-derivation."""
import numpy as np
import pytest

from minibert import rng

M64 = (1 << 64) - 1


def splitmix_bits(seed, offset, i):
    """The hash of minibert/rng.py written with Python's unbounded ints, masked by hand."""
    z = (seed * rng.GOLDEN + offset + i + rng.GOLDEN) & M64
    z = ((z ^ (z >> 30)) * rng.MIX1) & M64
    z = ((z ^ (z >> 27)) * rng.MIX2) & M64
    z ^= z >> 31
    return z >> 40


def test_first_value_is_splitmix64_published_output():
    # SplitMix64 seeded with 0 first returns 0xE220A8397B1DCDAF (Steele et al.; Java's SplittableRandom).
    # Our counter for (seed=0, offset=0, i=0) is exactly that generator's first state.
    assert int(rng.random_bits(0, 0, np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF >> 40


@pytest.mark.parametrize("seed,offset", [(0, 0), (1234, 0), (2**63 + 17, 99), (7, 2**40 + 5)])
def test_vectorised_bits_match_integer_arithmetic(seed, offset):
    idx = np.random.default_rng(seed % 2**32).integers(0, 2**40, size=200, dtype=np.uint64)
    got = rng.random_bits(seed, offset, idx)
    want = [splitmix_bits(seed, offset, int(i)) for i in idx]
    assert got.tolist() == want


def test_keep_rate_is_binomial():
    p, n = 0.1, 1_000_000
    kept = rng.keep_mask((n,), p, seed=3).mean()
    sd = np.sqrt(p * (1 - p) / n)
    assert abs((1 - kept) - p) < 5 * sd


def test_offset_shifts_the_stream():
    # Element i at offset o is element i + o at offset 0: a backend may split a tensor into chunks.
    a = rng.keep_mask((1000,), 0.3, seed=5, offset=0)
    b = rng.keep_mask((900,), 0.3, seed=5, offset=100)
    np.testing.assert_array_equal(a[100:], b)
    assert (a[:900] != b).any()


def test_threshold_and_scale():
    assert rng.dropout_threshold(0.0) == 0
    assert rng.dropout_threshold(0.5) == 1 << 23
    m = rng.dropout_scale_mask((64, 64), 0.25, seed=1)
    assert set(np.unique(m).tolist()) == {0.0, 1 / 0.75}
    np.testing.assert_array_equal(rng.dropout_scale_mask((3, 4), 0.0, seed=1), np.ones((3, 4)))
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout probability"):
            rng.dropout_threshold(bad)


def test_dropout_sites_own_disjoint_counter_ranges():
    L = 4
    sites = [(rng.EMBEDDINGS_LAYER, rng.SITE_EMBEDDINGS)] + [
        (layer, s) for layer in range(L)
        for s in (rng.SITE_ATTENTION_PROBS, rng.SITE_ATTENTION_OUTPUT, rng.SITE_FFN_OUTPUT)]
    starts = sorted(rng.dropout_site_offset(layer, s, 10) for layer, s in sites)
    assert len(set(starts)) == len(sites)
    assert min(np.diff(starts)) >= rng.SITE_STRIDE
    # the classifier's site sits one past the last encoder layer, after every encoder site
    assert rng.dropout_site_offset(L, rng.SITE_CLASSIFIER, 10) > max(starts)
    assert rng.dropout_site_offset(0, rng.SITE_ATTENTION_OUTPUT, 1) == 4 * 2 ** 40  # the documented formula
    with pytest.raises(ValueError, match="no dropout site"):
        rng.dropout_site_offset(-1, 1, 10)
    with pytest.raises(ValueError, match="no dropout site"):
        rng.dropout_site_offset(0, 3, 10)
    with pytest.raises(ValueError, match="2\\*\\*40"):
        rng.dropout_site_offset(0, 0, 2 ** 41)
