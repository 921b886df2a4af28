"""Mechanics of the counterfactual evaluation on tiny sizes: removal removes, caching and
resuming work, results and overlaps are computed from the right sets. Not the numbers."""
import json
import os
import shutil

import numpy as np
import pytest

from mucs import evaluate as ev_mod
from mucs.errors import MucsError

METHODS = ["mucs", "pixel_nn", "mucs+pixel_nn"]


class TrainSpy:
    """Wraps mucs.evaluate.train and records each call's excluded indices."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, data, out_dir, opts, device="cpu", progress=None, cancel=None, exclude=None):
        self.calls.append(sorted(int(i) for i in exclude))
        return self.real(data, out_dir, opts, device=device, progress=progress, cancel=cancel, exclude=exclude)


@pytest.fixture(scope="module")
def first_run(tiny_npz, tmp_path_factory):
    work = str(tmp_path_factory.mktemp("eval") / "work")
    out = os.path.join(os.path.dirname(work), "results", "cf.json")
    cfg = ev_mod.preset("tiny", data=tiny_npz)
    spy = TrainSpy(ev_mod.train)
    mp = pytest.MonkeyPatch()
    mp.setattr(ev_mod, "train", spy)
    try:
        ev = ev_mod.Evaluation(cfg, work, log=lambda m: None)
        result = ev.run(METHODS, out_json=out)
    finally:
        mp.undo()
    return dict(cfg=cfg, work=work, out=out, ev=ev, result=result, spy=spy)


def test_removal_really_removes_the_union_of_top_k(first_run):
    ev, result, spy = first_run["ev"], first_run["result"], first_run["spy"]
    from mucs.models import load_model
    model_a = load_model(ev.model_dir([]))
    before = ev.generated(ev.model_dir([]))
    k, N = ev.k(), len(ev.data())
    assert spy.calls[0] == []                                   # model A: nothing removed
    for m in METHODS:
        sets = ev.top_sets(ev.target_scores(m, model_a, before["targets"]))
        assert all(len(s) == k for s in sets)
        union = sorted(set(int(i) for s in sets for i in s))
        assert union in spy.calls                               # trained without exactly that set
        with open(os.path.join(ev.model_dir(union), "mucs_train.json")) as f:
            rec = json.load(f)
        assert rec["num_train"] == N - len(union) and rec["excluded"] == len(union)
        assert result["methods"][m]["removed"] == len(union)
    # each random repeat is the union of random top-k sets, and the repeats differ
    rand = [c for c in spy.calls[1:1 + first_run["cfg"].random_repeats]]
    assert len(rand) == 2 and rand[0] != rand[1] and all(0 < len(r) <= k * first_run["cfg"].targets for r in rand)


def test_results_layout_and_table(first_run):
    result = first_run["result"]
    with open(first_run["out"]) as f:
        saved = json.load(f)
    assert saved["complete"] and not saved["missing"]
    for m in ["random"] + METHODS:
        for g in ("targets", "controls"):
            for metric in ("ssim", "mse", "feature_cosine"):
                r = saved["methods"][m][g][metric]
                assert 0.0 <= r["auc"] <= 1.0 and np.isfinite(r["mean_relative_change"])
    table = ev_mod.markdown_table(result)
    assert all(f"`{m}`" in table for m in METHODS) and "targets SSIM" in table
    assert "MUCS targets SSIM AUC" in ev_mod.verdict(result)
    assert all(f"| `{m}` |" in ev_mod.ci_table(result) for m in ["random"] + METHODS)
    assert ev_mod.overlap_table(result).count("1.00") == len(METHODS)       # each method against itself
    assert saved["seeds"]["target_seeds"] == [1000, 1001]


def test_overlap_statistics_come_from_the_top_k_sets(first_run):
    from mucs.models import load_model
    from mucs.overlap import between_methods, mean_pairwise_overlap
    ev, result = first_run["ev"], first_run["result"]
    model_a = load_model(ev.model_dir([]))
    before = ev.generated(ev.model_dir([]))
    sets = {m: ev.top_sets(ev.target_scores(m, model_a, before["targets"])) for m in METHODS}
    ov = result["overlap"]
    for m in METHODS:
        assert ov["within"][m]["mean_pairwise"] == pytest.approx(mean_pairwise_overlap(sets[m]))
        assert ov["between"][m][m] == pytest.approx(1.0)
    assert ov["between"]["mucs"]["pixel_nn"] == pytest.approx(between_methods(sets["mucs"], sets["pixel_nn"]))
    assert ov["between"]["mucs"]["pixel_nn"] == ov["between"]["pixel_nn"]["mucs"]


def test_rerun_resumes_without_recomputing(first_run, monkeypatch):
    spy = TrainSpy(ev_mod.train)
    monkeypatch.setattr(ev_mod, "train", spy)
    ev = ev_mod.Evaluation(first_run["cfg"], first_run["work"], log=lambda m: None)
    again = ev.run(METHODS)
    assert spy.calls == [] and ev.computed == dict(retrains=0, generations=0, attributions=0)
    assert again["methods"]["mucs"] == json.loads(json.dumps(first_run["result"]["methods"]["mucs"]))


def test_partial_work_folder_resumes_only_what_is_missing(first_run, tmp_path, monkeypatch):
    """A run stopped after some retrains and attributions: only the missing ones are computed."""
    work = str(tmp_path / "copy")
    shutil.copytree(first_run["work"], work)
    ev = ev_mod.Evaluation(first_run["cfg"], work, log=lambda m: None)
    union = sorted(set(first_run["spy"].calls[-1]))               # the last method's retrain
    shutil.rmtree(ev.model_dir(union))
    mucs_files = sorted(os.listdir(os.path.join(work, "attributions", "mucs")))
    os.remove(os.path.join(work, "attributions", "mucs", mucs_files[0]))
    spy = TrainSpy(ev_mod.train)
    monkeypatch.setattr(ev_mod, "train", spy)
    ev.run(METHODS)
    assert spy.calls == [union]
    assert ev.computed["retrains"] == 1 and ev.computed["attributions"] == 1
    # the recomputed attribution is the same as before (deterministic), so no other retrain was needed


def test_training_is_deterministic_for_a_seed_and_removed_set(first_run, tmp_path):
    from safetensors.numpy import load_file
    ev = first_run["ev"]
    cfg = first_run["cfg"]
    removed = np.array([1, 5, 9])
    paths = []
    for name in ("a", "b"):
        ev_mod.train(ev.data(), str(tmp_path / name), cfg.train_options(), exclude=removed)
        paths.append(load_file(str(tmp_path / name / "unet" / "diffusion_pytorch_model.safetensors")))
    assert paths[0].keys() == paths[1].keys()
    assert all(np.array_equal(paths[0][k], paths[1][k]) for k in paths[0])


def test_model_key_depends_on_removed_set_and_recipe(first_run):
    ev = first_run["ev"]
    assert ev.model_key([3, 1]) == ev.model_key([1, 3])
    assert ev.model_key([1, 3]) != ev.model_key([1, 4])
    other = ev_mod.Evaluation(first_run["cfg"].replace(train_steps=41), first_run["work"], log=lambda m: None)
    assert other.model_key([1, 3]) != ev.model_key([1, 3])


def test_cli_user_errors_exit_2(tiny_npz, tmp_path, capsys):
    from mucs.__main__ import main
    base = ["evaluate", "--preset", "tiny", "--data", tiny_npz, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o.json")]
    assert main(base + ["--methods", "dtrak"]) == 2
    assert "unknown attribution method" in capsys.readouterr().err
    assert main(base + ["--k-frac", "1.5"]) == 2
    assert main(base + ["--n-train", "1000"]) == 2
    with pytest.raises(SystemExit):
        main(["evaluate", "--preset", "huge"])


def test_balanced_subset():
    labels = np.repeat(np.arange(4), 10)
    idx = ev_mod._balanced_subset(labels, 40, 12, seed=0)
    assert len(idx) == 12 and len(set(idx)) == 12 and np.bincount(labels[idx]).tolist() == [3, 3, 3, 3]
    assert np.array_equal(idx, ev_mod._balanced_subset(labels, 40, 12, seed=0))


def test_cached_only_reports_what_exists_and_computes_nothing(first_run, tmp_path, monkeypatch):
    work = str(tmp_path / "copy")
    shutil.copytree(first_run["work"], work)
    ev = ev_mod.Evaluation(first_run["cfg"], work, log=lambda m: None, cached_only=True)
    shutil.rmtree(ev.model_dir(sorted(set(first_run["spy"].calls[-1]))))   # the last method's retrain
    spy = TrainSpy(ev_mod.train)
    monkeypatch.setattr(ev_mod, "train", spy)
    out = str(tmp_path / "partial.json")
    result = ev.run(METHODS, out_json=out)
    assert spy.calls == [] and ev.computed == dict(retrains=0, generations=0, attributions=0)
    assert not result["complete"] and result["missing"] == [METHODS[-1]]
    with open(out) as f:
        assert set(json.load(f)["methods"]) == {"random"} | set(METHODS[:-1])
    empty = ev_mod.Evaluation(first_run["cfg"], str(tmp_path / "empty"), log=lambda m: None, cached_only=True)
    with pytest.raises(ev_mod._Missing):
        empty.run(METHODS)


def test_claim_is_exclusive_and_takes_over_locks_of_dead_processes(tmp_path):
    import socket
    import subprocess
    target = str(tmp_path / "models" / "abc")
    with ev_mod.claim(target):
        assert os.path.exists(target + ".lock")
        with pytest.raises(ev_mod._Busy):
            with ev_mod.claim(target):
                pass
    assert not os.path.exists(target + ".lock")
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid, host, free in ((dead.pid, socket.gethostname(), True), (os.getpid(), socket.gethostname(), False),
                            (dead.pid, "another-machine", False)):
        with open(target + ".lock", "w") as f:
            json.dump(dict(pid=pid, host=host), f)
        if free:
            with ev_mod.claim(target):
                pass
            assert not os.path.exists(target + ".lock")
        else:
            with pytest.raises(ev_mod._Busy):
                with ev_mod.claim(target):
                    pass
    os.remove(target + ".lock")


def test_two_workers_on_one_work_folder_compute_everything_once(first_run, tiny_npz, tmp_path):
    """`python -m mucs evaluate` started twice on one folder: no retrain or attribution is done twice,
    both finish, and the table equals a single worker's."""
    import ast
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "mucs", "evaluate", "--preset", "tiny", "--data", tiny_npz, "--threads", "1",
           "--work", str(tmp_path / "w"), "--methods", ",".join(METHODS)]
    procs = [subprocess.Popen(cmd + ["--out", str(tmp_path / f"o{i}.json")], cwd=root, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    computed = [ast.literal_eval(o.split("computed this run: ")[1].split("; wrote")[0]) for o in outs]
    cfg = first_run["cfg"]
    assert sum(c["retrains"] for c in computed) == 1 + cfg.random_repeats + len(METHODS)
    assert sum(c["attributions"] for c in computed) == cfg.targets * 2        # mucs and pixel_nn, once each
    locks = [f for _, _, files in os.walk(tmp_path / "w") for f in files if f.endswith(".lock")]
    assert locks == []
    expected = _flat(json.loads(json.dumps(first_run["result"]["methods"])))
    for i in range(2):
        with open(tmp_path / f"o{i}.json") as f:
            got = _flat(json.load(f)["methods"])
        # feature cosines differ in the 9th digit between thread counts (their relative changes in the 7th)
        assert got.keys() == expected.keys() and got == pytest.approx(expected, rel=1e-6, abs=1e-5)


def _flat(d, prefix=""):
    """{"a": {"b": [1, 2]}} -> {"a/b/0": 1, "a/b/1": 2}: nested results compared number by number."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        return {prefix: d}
    out = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}/{k}"))
    return out


def test_preset_changes_reach_the_mucs_settings():
    s = ev_mod.preset("full", lr_factor=5, noises=16, max_steps=100).mucs_settings()
    assert (s.lr_factor, s.noises, s.max_steps) == (5, 16, 100)
    assert ev_mod.preset("full").mucs_settings().lr_factor == 10        # the paper's factor unless asked
