"""The evaluation's options: a bad one is one error line before any work (exit 2, nothing written), the
presets reach the MUCS settings, the balanced training subset."""
import os

import numpy as np
import pytest

from mucs import evaluation as ev_mod


def test_cli_user_errors_exit_2(tiny_npz, tmp_path, capsys):
    from mucs.__main__ import main
    base = ["evaluate", "--preset", "tiny", "--data", tiny_npz, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o.json")]
    assert main(base + ["--methods", "dtrakk"]) == 2
    assert "unknown attribution method" in capsys.readouterr().err
    assert main(base + ["--method-options", '{"abu": 3}']) == 2
    assert main(base + ["--k-frac", "1.5"]) == 2
    assert main(base + ["--n-train", "1000"]) == 2
    assert main(base + ["--target-auc", "1.5"]) == 2
    assert main(base + ["--engine", "serial", "--address", "auto"]) == 2
    assert main(base + ["--retrain-seeds", "1,x"]) == 2
    assert "--retrain-seeds" in capsys.readouterr().err
    assert main(base + ["--retrain-seeds", "-1"]) == 2
    assert not os.path.exists(tmp_path / "o.json")
    with pytest.raises(SystemExit):
        main(["evaluate", "--preset", "huge"])
    # one default device for every command: CUDA when present, else the CPU (not always the CPU)
    from mucs.__main__ import build_parser
    assert build_parser().parse_args(["evaluate"]).device is None
    assert build_parser().parse_args(["attribute", "--list-classes"]).device is None


def test_balanced_subset():
    labels = np.repeat(np.arange(4), 10)
    idx = ev_mod.balanced_subset(labels, 40, 12, seed=0)
    assert len(idx) == 12 and len(set(idx)) == 12 and np.bincount(labels[idx]).tolist() == [3, 3, 3, 3]
    assert np.array_equal(idx, ev_mod.balanced_subset(labels, 40, 12, seed=0))


def test_preset_changes_reach_the_mucs_settings():
    s = ev_mod.preset("full", lr_factor=5, noises=16, max_steps=100).mucs_settings()
    assert (s.lr_factor, s.noises, s.max_steps) == (5, 16, 100)
    assert ev_mod.preset("full").mucs_settings().lr_factor == 10        # the paper's factor unless asked
    assert ev_mod.preset("full").control_design == "disjoint" and ev_mod.preset("full").max_steps == 400
