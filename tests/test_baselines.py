"""Baselines share MUCS's interface: a score for every training item."""
import numpy as np
import pytest

from mucs.method import baselines
from mucs.sources.data import QueryImage, load_dataset
from mucs.errors import MucsError


@pytest.fixture(scope="module")
def ctx(tiny_model_dir, tiny_npz, tmp_path_factory):
    from mucs.sources.models import load_model
    from mucs.settings import Settings
    s = Settings(noises=8, batch_size=16, null_batches=4, null_batch_size=16, max_steps=5, top_k=5)
    return baselines.Context(load_model(tiny_model_dir), load_dataset(tiny_npz), s,
                             cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_ranks_and_rank_average():
    assert baselines.ranks(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert baselines.ranks(np.array([1.0, 1.0, 2.0])).tolist() == [0.25, 0.25, 1.0]   # ties share their rank
    avg = baselines.rank_average([np.array([3.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])])
    assert avg.tolist() == [0.5, 0.25, 0.75]
    with pytest.raises(ValueError):
        baselines.rank_average([np.zeros(2), np.zeros(3)])



def _old_ranks(scores):
    """Frozen copy of the hand-written average ranks that built the published ensemble rows."""
    s = np.asarray(scores, np.float64)
    n = len(s)
    if n <= 1:
        return np.ones(n)
    uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts) - 1
    avg = ends - (counts - 1) / 2.0
    return avg[inv] / (n - 1)


def test_ranks_by_scipy_equal_the_hand_written_ones_bit_for_bit():
    rng = np.random.default_rng(0)
    cases = [rng.normal(size=500), rng.integers(0, 7, 500).astype(float), np.zeros(4), np.array([2.0]),
             np.array([]), np.array([1.0, -0.0, 0.0, 3.0]), rng.normal(size=2)]
    for s in cases:
        assert np.array_equal(baselines.ranks(s), _old_ranks(s))

def test_components_and_unknown_methods():
    assert baselines.components("mucs+pixel_nn") == ["mucs", "pixel_nn"]
    with pytest.raises(MucsError):
        baselines.components("dtrack")
    with pytest.raises(MucsError):
        baselines.components("mucs+mucs")
    assert {"mucs", "mucs_plain_ga", "mucs_unnormalised", "mucs_fresh_noise", "random", "pixel_nn",
            "feature_nn"} <= set(baselines.method_names())


def test_random_is_reproducible_per_query():
    a, b = baselines.random_scores(50, 0, 1), baselines.random_scores(50, 0, 1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, baselines.random_scores(50, 0, 2))
    assert not np.array_equal(a, baselines.random_scores(50, 1, 1))


def test_nearest_neighbours_rank_the_query_itself_first(ctx):
    i = 7
    q = QueryImage(ctx.data.tensor([i])[0], [])
    for name in ("pixel_nn", "feature_nn"):
        s = baselines.scores(name, ctx, q, int(ctx.data.labels[i]), query_id=100 + i)
        assert s.shape == (len(ctx.data),)
        assert int(np.argmax(s)) == i and s[i] == pytest.approx(0.0, abs=1e-4)


def test_ablations_pass_their_settings(ctx, monkeypatch):
    seen = []

    class Fake:
        def attribute(self, query, label, settings=None, prompt=None):
            seen.append(settings)
            from types import SimpleNamespace
            return SimpleNamespace(scores=np.arange(len(ctx.data), dtype=float), steps=1, converged=True)
    fresh = baselines.Context(ctx.model, ctx.data, ctx.settings, _attributor=Fake())
    q = QueryImage(ctx.data.tensor([0])[0], [])
    for name in ("mucs", "mucs_plain_ga", "mucs_unnormalised", "mucs_fresh_noise"):
        assert baselines.scores(name, fresh, q, 0).shape == (len(ctx.data),)
    base, plain, unnorm, freshn = seen
    assert base.bounded and base.retain and base.normalised and base.consistent_noise
    assert not plain.bounded and not plain.retain and plain.normalised
    assert not unnorm.normalised and unnorm.bounded
    assert not freshn.consistent_noise and freshn.normalised


def test_mucs_and_an_ensemble_reuse_memoised_scores(ctx):
    q = QueryImage(ctx.data.tensor([3])[0], [])
    s = baselines.scores("mucs", ctx, q, int(ctx.data.labels[3]), query_id=3)
    assert s.shape == (len(ctx.data),) and np.isfinite(s).all()
    assert ("mucs", 3) in ctx.info
    e = baselines.scores("mucs+pixel_nn", ctx, q, int(ctx.data.labels[3]), query_id=3)
    want = baselines.rank_average([s, baselines.scores("pixel_nn", ctx, q, None, query_id=3)])
    assert np.allclose(e, want)


def test_queries_without_ids_never_share_memoised_scores(ctx):
    """The memo used to key on (method, query_id=0): a second query without an id got the first's scores."""
    q3, q9 = (QueryImage(ctx.data.tensor([i])[0], []) for i in (3, 9))
    l3, l9 = int(ctx.data.labels[3]), int(ctx.data.labels[9])
    s3 = baselines.scores("pixel_nn", ctx, q3, l3)
    s9 = baselines.scores("pixel_nn", ctx, q9, l9)
    assert int(np.argmax(s3)) == 3 and int(np.argmax(s9)) == 9
    assert baselines.scores("pixel_nn", ctx, q3, l3) is s3                    # same query: memoised
    r3, r9 = baselines.scores("random", ctx, q3, l3), baselines.scores("random", ctx, q9, l9)
    assert not np.array_equal(r3, r9)                                         # random is seeded per query
