"""The collection statistics of mucs.method.overlap against values worked out by hand on small
arrays (each expected number is derived in the comment beside it)."""
import numpy as np
import pytest

from mucs.method import overlap as ov

SETS = [[0, 1], [1, 2], [1]]          # three top-k sets over N = 4 training items


def test_distinct_coverage_and_counts():
    # {1,2,3} → 3; ∪ {3,4,5} → {1..5} = 5; ∪ {1,5,6} → {1..6} = 6
    assert ov.coverage_curve([[1, 2, 3], [3, 4, 5], [1, 5, 6]]).tolist() == [3, 5, 6]
    assert ov.coverage_curve(SETS).tolist() == [2, 3, 3]
    # item 0 in set 1; item 1 in all three; item 2 in set 2; item 3 in none (a repeat inside a set counts once)
    assert ov.counts(SETS, 4).tolist() == [1, 3, 1, 0]
    assert ov.counts([[2, 2]], 3).tolist() == [0, 0, 1]


def test_random_coverage_baseline():
    # N = 10, two sets of 2: an item escapes one set with p = 0.8, so E = 10·(1 − 0.8) = 2 after one set
    # and 10·(1 − 0.8²) = 3.6 after two; with sizes 2 then 5: 10·(1 − 0.8·0.5) = 6
    np.testing.assert_allclose(ov.expected_random_coverage(10, [2, 2]), [2.0, 3.6])
    np.testing.assert_allclose(ov.expected_random_coverage(10, [2, 5]), [2.0, 6.0])
    sim = ov.random_coverage(10, [2, 2], draws=4000, seed=1)
    assert sim.shape == (4000, 2) and (sim[:, 0] == 2).all()      # one set of 2 always covers 2
    assert set(np.unique(sim[:, 1])) <= {2, 3, 4}
    assert sim[:, 1].mean() == pytest.approx(3.6, abs=0.05)         # the simulation agrees with the formula
    # P(the second set equals the first) = 1 / C(10, 2) = 1/45; P(disjoint) = C(8, 2) / 45 = 28/45
    assert (sim[:, 1] == 4).mean() == pytest.approx(28 / 45, abs=0.03)


def test_concentration_shares_and_gini():
    c = np.array([1, 3, 1, 0])                   # counts of SETS: 5 slots in all
    assert ov.top_share(c, 0.25) == pytest.approx(3 / 5)   # ceil(0.25·4) = 1 item: the 3 of 5 slots
    assert ov.top_share(c, 0.5) == pytest.approx(4 / 5)    # 2 items: 3 + 1
    assert ov.top_share(c, 0.01) == pytest.approx(3 / 5)   # at least one item
    # sorted [0, 1, 1, 3]: Σ i·x_i = 0 + 2 + 3 + 12 = 17; G = 2·17/(4·5) − 5/4 = 0.45
    # (the same from the pairs: Σ|x_i − x_j| over ordered pairs = 18; 18 / (2·4²·1.25) = 0.45)
    assert ov.gini(c) == pytest.approx(0.45)
    assert ov.gini([0, 0, 0, 4]) == pytest.approx(0.75)     # one item has every slot: (N − 1)/N
    assert ov.gini([2, 2, 2, 2]) == 0.0 and ov.gini([0, 0]) == 0.0
    assert ov.concentration(SETS, 4, shares=(0.25,)) == pytest.approx({"top 25 %": 0.6, "gini": 0.45})
    # N = 200: the top 1 % is ceil(2) = 2 items, the top 10 % 20 items
    c = np.zeros(200)
    c[:3] = [10, 6, 4]
    c[3:23] = 1                                   # 20 + 20 = 40 slots
    got = ov.concentration([], 200)               # no sets: nothing to share
    assert got == {"top 1 %": 0.0, "top 10 %": 0.0, "gini": 0.0}
    assert ov.top_share(c, 0.01) == pytest.approx(16 / 40) and ov.top_share(c, 0.1) == pytest.approx(37 / 40)


def test_concentration_random_baseline():
    # sets as large as the training set: every item in every set, so the counts are flat:
    # the top 25 % (1 of 4 items) hold exactly 1/4 of the slots, Gini 0, in every draw
    r = ov.random_concentration(4, [4, 4], draws=5, shares=(0.25,))
    np.testing.assert_allclose(r["top 25 %"], 0.25)
    np.testing.assert_allclose(r["gini"], 0.0)
    # one set of one item: one count of 1 among N = 4, whichever item: top share 1, Gini 3/4
    r = ov.random_concentration(4, [1], draws=5, shares=(0.25,))
    np.testing.assert_allclose(r["top 25 %"], 1.0)
    np.testing.assert_allclose(r["gini"], 0.75)


def test_within_and_across_groups():
    m = np.array([[1, .5, .1], [.5, 1, .2], [.1, .2, 1]])
    g = ov.grouped_overlaps(m, ["a", "a", "b"])
    assert g["within"].tolist() == [0.5] and g["across"].tolist() == [0.1, 0.2]


def test_cluster_order_keeps_similar_sets_together():
    sets = [[0, 1, 2], [7, 8, 9], [0, 1, 3], [7, 8, 6]]      # 0 ~ 2 and 1 ~ 3 (overlap 2/3), else 0
    order = ov.cluster_order(ov.overlap_matrix(sets)).tolist()
    assert sorted(order) == [0, 1, 2, 3]
    assert {frozenset(order[:2]), frozenset(order[2:])} == {frozenset({0, 2}), frozenset({1, 3})}
    assert ov.cluster_order(np.eye(2)).tolist() == [0, 1]


def test_classical_mds_recovers_points_on_a_line():
    # points at 0, 1 and 3: centred at their mean 4/3 → −4/3, −1/3, 5/3 (largest coordinate positive)
    x = np.array([0.0, 1.0, 3.0])
    xy = ov.classical_mds(np.abs(x[:, None] - x[None, :]))
    np.testing.assert_allclose(xy[:, 0], [-4 / 3, -1 / 3, 5 / 3], atol=1e-9)
    np.testing.assert_allclose(xy[:, 1], 0.0, atol=1e-6)


def test_method_agreement_and_what_each_method_alone_finds():
    tops = {"mucs": [[1, 2], [3, 4]], "pixel_nn": [[2, 5], [3, 4]]}
    a = ov.agreement(tops)
    assert a["overlap"]["pixel_nn"].tolist() == [0.5, 1.0] and a["overlap"]["mucs"].tolist() == [1.0, 1.0]
    # query 1: MUCS alone has 1, pixel NN alone 5; query 2: the sets are equal, nobody is alone
    assert a["alone"] == {"mucs": {1: 1}, "pixel_nn": {5: 1}}
