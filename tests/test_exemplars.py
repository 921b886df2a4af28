"""The exemplar benchmark's mechanics on tiny sizes (mucs/evaluation/exemplars.py): ranking metrics, the
known-class design's items and its same-label control, paired differences per generation, options
checked before any work. Not the numbers (benchmarks/exemplars.md)."""

import numpy as np
import pytest

from mucs.errors import MucsError


def test_exemplar_ranking_metrics():
    from mucs.evaluation.exemplars import ranking_metrics
    scores = np.arange(20, dtype=float)[::-1].copy()        # item i has rank i + 1
    m = ranking_metrics(scores, np.array([0, 1, 14]))
    assert m["recall_at_10"] == pytest.approx(2 / 3) and m["mean_rank"] == pytest.approx(6.0)
    assert m["ap"] == pytest.approx((1 / 1 + 2 / 2 + 3 / 15) / 3)
    assert ranking_metrics(scores, np.array([0, 1, 2]))["ap"] == 1.0


def test_exemplar_known_class_items_and_the_same_label_control(tmp_path):
    """Known-class design: the candidates are A's whole subset (labels kept) then E unseen exemplars of
    class c; removed-class: the same exemplars after the subset without class c. The same-label
    control's expected metrics equal the average over every equally likely order of the label block."""
    import itertools
    from types import SimpleNamespace

    from conftest import make_images
    from mucs.evaluation import exemplars as ex
    from mucs.evaluation.exemplar_checks import choose_lambda, same_label_expectation
    from mucs.sources.data import load_dataset
    images, labels = make_images(n=40, classes=4)
    src, sub = str(tmp_path / "src.npz"), str(tmp_path / "sub.npz")
    names = np.array(["a", "b", "c", "d"])
    np.savez(src, images=images[..., 0], labels=labels, class_names=names)
    used = np.arange(20)
    np.savez(sub, images=images[used, ..., 0], labels=labels[used], class_names=names, source_indices=used)
    job = SimpleNamespace(data=lambda: load_dataset(sub), cfg=SimpleNamespace(data=src), data_path=sub,
                          work=str(tmp_path))
    known = ex.config_for("known-class", held_out_class=2, exemplars=3)
    path, removed, E = ex.candidates(job, known)
    cand = load_dataset(path)
    assert E == 3 and len(removed) == 0 and len(cand) == 23
    with np.load(path) as z:
        src_idx = z["source_indices"]
    exemplars = src_idx[-3:]
    assert set(exemplars) <= {22, 26, 30, 34, 38} and not set(exemplars) & set(used)   # unseen images of class 2
    np.testing.assert_array_equal(cand.labels, np.concatenate([labels[used], [2, 2, 2]]))
    np.testing.assert_array_equal(cand.images[-3:], images[exemplars])
    np.testing.assert_array_equal(ex.others_of(cand, E, 2), np.flatnonzero(labels[used] == 2))
    old_path, old_removed, _ = ex.candidates(job, ex.config_for("removed-class", held_out_class=2, exemplars=3))
    old = load_dataset(old_path)
    np.testing.assert_array_equal(old_removed, np.flatnonzero(labels[used] == 2))
    assert len(old) == 18 and np.sum(old.labels == 2) == 3            # the exemplars alone carry label 2
    with np.load(old_path) as z:
        np.testing.assert_array_equal(z["source_indices"][-3:], exemplars)
    # dev and held-out generations share one fine-tuned model; the removed-class key is the first design's
    assert known.finetune_key() == ex.config_for("known-class", held_out_class=2, exemplars=3, gen_seed=1,
                                                 generations=40).finetune_key()
    assert set(ex.ExemplarConfig().finetune_key()) == set(ex._LEGACY_FIELDS)
    with pytest.raises(MucsError, match="design"):
        ex.config_for("no-such")

    def direct(n_other, n_same, R):     # every placement of the R positives in the label block, equally likely
        per = []
        for pos in itertools.combinations(range(n_same), R):
            scores = np.concatenate([np.zeros(n_other), 2.0 - np.arange(n_same) / n_same])   # block order = rank
            per.append(ex.ranking_metrics(scores, n_other + np.array(pos)))
        return {k: np.mean([p[k] for p in per]) for k in per[0]}
    for n_other, n_same, R in ((15, 8, 3), (30, 12, 2), (5, 4, 4)):   # 8 ≤ 10 < 12: both recall branches
        want, got = direct(n_other, n_same, R), same_label_expectation(n_same, R)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12), k
    assert same_label_expectation(8, 8) == dict(recall_at_10=1.0, mean_rank=4.5, ap=1.0, same_label_items=8)
    pick = choose_lambda([1.0, 10.0, 100.0], [[dict(ap=0.2)], [dict(ap=0.5)], [dict(ap=0.5)]])
    assert pick["chosen"] == 10.0 and [r["ap"] for r in pick["grid"]] == [0.2, 0.5, 0.5]


def test_exemplar_paired_difference_is_per_generation():
    from mucs.evaluation.exemplar_report import paired
    rows = {"mucs": {"per_generation": [dict(ap=0.5, recall_at_10=0.5), dict(ap=0.7, recall_at_10=1.0)]},
            "dtrak": {"per_generation": [dict(ap=0.4, recall_at_10=0.5), dict(ap=0.2, recall_at_10=0.5)]}}
    d = paired(rows)["dtrak"]
    assert d["ap_difference"] == pytest.approx(0.3) and d["recall_at_10_difference"] == pytest.approx(0.25)
    assert d["ap_difference_ci95"][0] == pytest.approx(0.1) and d["ap_difference_ci95"][1] == pytest.approx(0.5)
    assert paired({"dtrak": rows["dtrak"]}) == {}
    from mucs.evaluation.exemplar_report import _settings
    got = _settings(dict(options=dict(lam=5e6, dim=16)), dict(chosen=1e4, default=5e6))
    assert got["options"] == dict(lam=1e4, dim=16) and "5e+06" in got["lam_source"]    # the row's λ is the one recorded


@pytest.mark.parametrize("grid, why", [("1e3,abc", "comma-separated numbers"), ("1e3,-1", "finite number > 0")])
def test_exemplar_bad_lambda_grid_is_one_error_line_before_any_work(tmp_path, capsys, grid, why):
    from mucs.__main__ import main
    work = tmp_path / "w"
    assert main(["evaluate", "--protocol", "exemplars", "--exemplar-design", "known-class", "--work", str(work),
                 "--lambda-grid", grid]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and why in err and err.count("\n") == 1 and not work.exists()
