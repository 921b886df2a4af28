"""Metrics of the counterfactual test on hand-made inputs."""
import numpy as np
import pytest

from mucs.evaluation import metrics


def _img(seed, n=3, size=16, c=1):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, c)).astype(np.uint8)


def test_ssim_identical_is_one_and_symmetric():
    a, b = _img(0), _img(1)
    assert np.allclose(metrics.ssim(a, a), 1.0)
    assert np.allclose(metrics.ssim(a, b), metrics.ssim(b, a))
    assert (metrics.ssim(a, b) < 0.5).all()


def test_ssim_decreases_with_noise_and_handles_small_and_rgb_images():
    a = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))[None, :, :, None]
    rng = np.random.default_rng(0)
    vals = [metrics.ssim(a, np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8))[0] for s in (2, 10, 40)]
    assert vals[0] > vals[1] > vals[2]
    small = _img(2, n=2, size=4, c=3)          # window shrinks to the image
    assert metrics.ssim(small, small).shape == (2,)
    assert np.allclose(metrics.ssim(small, small), 1.0)


def test_ssim_matches_a_direct_computation():
    """One window covering a whole 7x7 image: SSIM equals the global formula with Gaussian weights."""
    a, b = _img(3, n=1, size=7), _img(4, n=1, size=7)
    x, y = a[0, :, :, 0] / 255.0, b[0, :, :, 0] / 255.0
    g = np.exp(-((np.arange(7) - 3) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    sxx, syy, sxy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2, (w * x * y).sum() - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    want = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    assert metrics.ssim(a, b)[0] == pytest.approx(want, rel=1e-9)


def test_mse_and_cosine():
    a = np.zeros((1, 2, 2, 1), np.uint8)
    b = np.full((1, 2, 2, 1), 255, np.uint8)
    assert metrics.mse(a, b)[0] == pytest.approx(1.0)
    assert metrics.mse(a, a)[0] == 0.0
    assert metrics.cosine(np.array([[1.0, 0], [1, 1]]), np.array([[2.0, 0], [-1, -1]])) == pytest.approx([1.0, -1.0])


def test_auc_on_hand_made_inputs():
    assert metrics.auc([1, 2, 3], [0]) == 1.0            # method changes the item more than any random removal
    assert metrics.auc([1, 2, 3], [4]) == 0.0
    assert metrics.auc([1, 1], [1]) == 0.5               # ties count 1/2
    assert metrics.auc([1, 2], [2]) == 0.25
    assert metrics.auc([1, 2, 3, 4], [2.5, 0]) == pytest.approx((2 + 4) / 8)
    # a distance: larger = more changed, so the comparison flips
    assert metrics.auc([1, 2, 3], [4], higher_is_similar=False) == 1.0
    assert np.isnan(metrics.auc([], [1]))


def test_mean_relative_change():
    assert metrics.mean_relative_change([1, 2, 3], [1, 1]) == pytest.approx(-50.0)
    assert metrics.mean_relative_change([0.8, 0.9, 1.0], [0.9]) == pytest.approx(0.0)
    s = metrics.summarise([1, 2, 3], [1, 1], "ssim")
    assert s["auc"] == pytest.approx(5 / 6) and s["mean_relative_change"] == pytest.approx(-50.0) and s["n"] == 2
    assert metrics.summarise([1, 2, 3], [4], "mse")["auc"] == 1.0


def test_feature_cosine_of_identical_images_is_one(tiny_model_dir):
    from mucs.sources.models import load_model
    model = load_model(tiny_model_dir)
    a, b = _img(5, n=2, size=8), _img(6, n=2, size=8)
    assert np.allclose(metrics.feature_cosine(model, a, a, [0, 1]), 1.0)
    sims = metrics.similarities(a, b, model, [0, 1])
    assert set(sims) == {"ssim", "mse", "feature_cosine"} and all(len(v) == 2 for v in sims.values())


def test_auc_bootstrap_interval_brackets_the_auc():
    rng = np.random.default_rng(0)
    r, m = rng.normal(0, 1, 40), rng.normal(-1, 1, 10)
    lo, hi = metrics.auc_bootstrap_ci(r, m)
    assert lo <= metrics.auc(r, m) <= hi and 0 <= lo < hi <= 1
    assert metrics.auc_bootstrap_ci([1, 2, 3], [0]) == (1.0, 1.0)


# --- library replacements give the numbers of the hand-written code they replaced -----------------
def _old_auc(sim_random, sim_method, higher_is_similar=True):
    """Frozen copy of the pairwise AUC that computed the published tables (replaced by scipy's U)."""
    r = np.asarray(sim_random, np.float64).ravel()
    m = np.asarray(sim_method, np.float64).ravel()
    if len(r) == 0 or len(m) == 0:
        return float("nan")
    if not higher_is_similar:
        r, m = -r, -m
    gt = (r[:, None] > m[None, :]).sum()
    eq = (r[:, None] == m[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(r) * len(m)))


def _old_auc_bootstrap_ci(sim_random, sim_method, higher_is_similar=True, n_boot=1000, seed=0, level=0.95):
    """Frozen copy of the interval behind the published tables (one AUC per resample, in a loop)."""
    r = np.asarray(sim_random, np.float64).ravel()
    m = np.asarray(sim_method, np.float64).ravel()
    rng = np.random.default_rng(seed)
    vals = [_old_auc(r[rng.integers(0, len(r), len(r))], m[rng.integers(0, len(m), len(m))], higher_is_similar)
            for _ in range(n_boot)]
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def _auc_cases():
    rng = np.random.default_rng(7)
    yield rng.normal(0.9, 0.03, 160), rng.normal(0.88, 0.04, 40)        # the 40-target table's sizes
    yield rng.normal(0, 1, 120), rng.normal(-0.3, 1, 40)
    yield rng.integers(0, 4, 80).astype(float), rng.integers(0, 4, 20).astype(float)   # many ties
    yield rng.integers(0, 2, 7).astype(float), rng.integers(0, 2, 3).astype(float)
    yield np.ones(5), np.ones(2)                                          # all tied
    yield np.array([0.3]), np.array([0.1, 0.5, 0.3])


@pytest.mark.parametrize("hi", [True, False])
def test_auc_and_its_interval_equal_the_hand_written_ones_bit_for_bit(hi):
    for r, m in _auc_cases():
        assert metrics.auc(r, m, hi) == _old_auc(r, m, hi)
        assert metrics.auc_bootstrap_ci(r, m, hi, n_boot=300, seed=3) == _old_auc_bootstrap_ci(r, m, hi, 300, 3)
    r, m = next(_auc_cases())
    assert metrics.auc_bootstrap_ci(r, m, hi) == _old_auc_bootstrap_ci(r, m, hi)
