"""Mechanics of the counterfactual evaluation on tiny sizes: removal removes, caching and
resuming work, results and overlaps are computed from the right sets, the cache keys and folder
layout stay those of earlier runs, Ray tasks give the serial table. Not the numbers."""
import inspect
import json
import os
import shutil

import numpy as np
import pytest
import torch

from mucs import evaluation as ev_mod
from mucs.cache import cache_key
from mucs.errors import MucsError

METHODS = ["mucs", "pixel_nn", "mucs+pixel_nn"]


class RetrainSpy:
    """The retrain callable `retrain(data, removed, options, out_dir)`, recording each removed set."""

    def __init__(self):
        self.calls = []

    def __call__(self, data, removed, options, out_dir):
        self.calls.append(sorted(int(i) for i in removed))
        return ev_mod.train_without(data, removed, options, out_dir)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Steps set torch's thread count (Evaluation(threads=1)); the rest of the suite keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def first_run(tiny_npz, tmp_path_factory):
    """A serial run (1 torch thread, as each Ray task) of the tiny preset."""
    work = str(tmp_path_factory.mktemp("eval") / "work")
    out = os.path.join(os.path.dirname(work), "results", "cf.json")
    cfg = ev_mod.preset("tiny", data=tiny_npz)
    spy = RetrainSpy()
    threads = torch.get_num_threads()
    try:
        ev = ev_mod.Evaluation(cfg, work, log=lambda m: None, retrain=spy, threads=1)
        result = ev.run(METHODS, out_json=out)
    finally:
        torch.set_num_threads(threads)
    return dict(cfg=cfg, work=work, out=out, ev=ev, result=result, spy=spy)


def test_removal_really_removes_the_union_of_top_k(first_run):
    ev, result, spy = first_run["ev"], first_run["result"], first_run["spy"]
    model_a = ev.load(ev.model_dir([]))
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
    assert ev.computed == dict(retrains=1 + 2 + len(METHODS), generations=1 + 2 + len(METHODS),
                               attributions=first_run["cfg"].targets * 2)


def test_results_layout_and_table(first_run):
    result = first_run["result"]
    with open(first_run["out"]) as f:
        saved = json.load(f)
    with open(os.path.join(first_run["work"], "results.json")) as f:
        assert json.load(f)["methods"] == saved["methods"]
    assert saved["complete"] and not saved["missing"]
    for m in ["random"] + METHODS:
        for g in ("targets", "controls"):
            for metric in ("ssim", "mse", "feature_cosine"):
                r = saved["methods"][m][g][metric]
                assert 0.0 <= r["auc"] <= 1.0 and np.isfinite(r["mean_relative_change"])
    table = ev_mod.markdown_table(result)
    assert all(f"`{m}`" in table for m in METHODS) and "targets SSIM" in table
    assert all(f"| `{m}` |" in ev_mod.ci_table(result) for m in ["random"] + METHODS)
    assert ev_mod.overlap_table(result).count("1.00") == len(METHODS)       # each method against itself
    assert saved["seeds"]["target_seeds"] == [1000, 1001]
    assert set(saved["timing"]["compute_seconds"]) == {"train", "generate", "attribute:mucs", "attribute:pixel_nn", "total"}


def test_verdict_takes_its_target_as_an_input(first_run):
    result = first_run["result"]
    assert inspect.signature(ev_mod.verdict).parameters["target_auc"].default is inspect.Parameter.empty
    auc = result["methods"]["mucs"]["targets"]["ssim"]["auc"]
    assert "meets the ≥ 0" in ev_mod.verdict(result, auc) and "misses the ≥ 1" in ev_mod.verdict(result, 1.0)


def test_overlap_statistics_come_from_the_top_k_sets(first_run):
    from mucs.method.overlap import between_methods, mean_pairwise_overlap
    ev, result = first_run["ev"], first_run["result"]
    model_a = ev.load(ev.model_dir([]))
    before = ev.generated(ev.model_dir([]))
    sets = {m: ev.top_sets(ev.target_scores(m, model_a, before["targets"])) for m in METHODS}
    ov = result["overlap"]
    for m in METHODS:
        assert ov["within"][m]["mean_pairwise"] == pytest.approx(mean_pairwise_overlap(sets[m]))
        assert ov["between"][m][m] == pytest.approx(1.0)
    assert ov["between"]["mucs"]["pixel_nn"] == pytest.approx(between_methods(sets["mucs"], sets["pixel_nn"]))
    assert ov["between"]["mucs"]["pixel_nn"] == ov["between"]["pixel_nn"]["mucs"]


def test_context_follows_its_model_argument(first_run):
    """Evaluation.context(model) once returned the first call's context for any later model."""
    ev = first_run["ev"]
    model_a = ev.load(ev.model_dir([]))
    other = ev.load(ev.model_dir(first_run["spy"].calls[1]))          # random removal 0: other weights
    assert other.fingerprint() != model_a.fingerprint()
    assert ev.context(model_a).model is model_a
    ctx = ev.context(other)
    assert ctx.model is other and ctx.attributor().model is other
    assert ev.context(model_a).model is model_a


def test_rerun_resumes_without_recomputing(first_run):
    spy = RetrainSpy()
    ev = ev_mod.Evaluation(first_run["cfg"], first_run["work"], log=lambda m: None, retrain=spy, threads=1)
    again = ev.run(METHODS)
    assert spy.calls == [] and ev.computed == dict(retrains=0, generations=0, attributions=0)
    assert again["methods"]["mucs"] == json.loads(json.dumps(first_run["result"]["methods"]["mucs"]))


def test_partial_work_folder_resumes_only_what_is_missing(first_run, tmp_path):
    """A run stopped after some retrains and attributions: only the missing ones are computed."""
    work = str(tmp_path / "copy")
    shutil.copytree(first_run["work"], work)
    spy = RetrainSpy()
    ev = ev_mod.Evaluation(first_run["cfg"], work, log=lambda m: None, retrain=spy, threads=1)
    union = sorted(set(first_run["spy"].calls[-1]))               # the last method's retrain
    shutil.rmtree(ev.model_dir(union))
    mucs_files = sorted(os.listdir(os.path.join(work, "attributions", "mucs")))
    os.remove(os.path.join(work, "attributions", "mucs", mucs_files[0]))
    ev.run(METHODS)
    assert spy.calls == [union]
    # the retrained model's items stay cached under its key; the recomputed attribution is the same as
    # before (deterministic), so no other retrain was needed
    assert ev.computed == dict(retrains=1, generations=0, attributions=1)


def test_cached_only_reproduces_the_table_and_computes_nothing(first_run, tmp_path):
    work = str(tmp_path / "copy")
    shutil.copytree(first_run["work"], work)
    spy = RetrainSpy()
    ev = ev_mod.Evaluation(first_run["cfg"], work, log=lambda m: None, cached_only=True, retrain=spy, threads=1)
    result = ev.run(METHODS)
    assert spy.calls == [] and ev.computed == dict(retrains=0, generations=0, attributions=0)
    for table in (ev_mod.markdown_table, ev_mod.ci_table, ev_mod.overlap_table):
        assert table(result) == table(first_run["result"])
    assert _flat(json.loads(json.dumps(result["methods"]))) == _flat(json.loads(json.dumps(first_run["result"]["methods"])))
    assert result["timing"]["compute_seconds"] == pytest.approx(first_run["result"]["timing"]["compute_seconds"])


def test_cached_only_reports_what_exists(first_run, tmp_path):
    work = str(tmp_path / "copy")
    shutil.copytree(first_run["work"], work)
    ev = ev_mod.Evaluation(first_run["cfg"], work, log=lambda m: None, cached_only=True, threads=1)
    shutil.rmtree(ev.model_dir(sorted(set(first_run["spy"].calls[-1]))))   # the last method's retrain
    pixel = os.path.join(work, "attributions", "pixel_nn")
    os.remove(os.path.join(pixel, sorted(os.listdir(pixel))[0]))
    out = str(tmp_path / "partial.json")
    result = ev.run(["mucs", "pixel_nn", "mucs+pixel_nn"], out_json=out)
    assert ev.computed == dict(retrains=0, generations=0, attributions=0)
    assert not result["complete"] and result["missing"] == ["pixel_nn", "mucs+pixel_nn"]
    with open(out) as f:
        assert set(json.load(f)["methods"]) == {"random", "mucs"}
    empty = ev_mod.Evaluation(first_run["cfg"], str(tmp_path / "empty"), log=lambda m: None, cached_only=True)
    with pytest.raises(MucsError, match="nothing to report yet"):
        empty.run(METHODS)


def test_cache_keys_and_folder_layout_are_those_of_earlier_runs(first_run, tiny_npz, tmp_path):
    """Work folders made by earlier versions (a long evaluation may be running with one) stay usable:
    the keys below were computed by the lock-file version of mucs/evaluation/."""
    ev = first_run["ev"]
    assert ev.model_key([]) == "3a7d66e0b97dc5f31b55a6da225e3eff"
    assert ev.model_key([1, 3]) == "f2e9d6d51d3710e0406b02019be34745"
    assert ev.model_dir([]) == os.path.join(ev.work, "models", "3a7d66e0b97dc5f3")
    job = ev.job
    assert job.generated_key("/x/0123456789abcdef") == "16f5490da8987526fedada26c6744c33"
    assert os.path.isfile(os.path.join(ev.work, "generated", "3a7d66e0b97dc5f3.safetensors"))
    assert os.path.isfile(os.path.join(ev.work, "models", "3a7d66e0b97dc5f3.json"))
    sub = ev_mod.Evaluation(ev_mod.preset("tiny", data=tiny_npz, n_train=16, control_design="disjoint"),
                            str(tmp_path / "w2"), log=lambda m: None)
    assert os.listdir(tmp_path / "w2") == ["data-c312ac3603a5.npz"]
    assert sub.model_key([2]) == "939210d9c14c278a571af95dfd572966"
    # attributions: attributions/<method>/target###-<key16>.safetensors (.npz before); MUCS settings added after the noise-range
    # change enter the key only when they differ from their defaults
    model_a = ev.load(ev.model_dir([]))
    img = ev.generated(ev.model_dir([]))["targets"][1]
    s = first_run["cfg"].mucs_settings()
    old_settings = {k: v for k, v in s.to_dict().items() if k not in ("screen_noises", "screen_keep", "fragile_refs",
                                                                     "fragile_seed", "unlearn_chunk", "precision",
                                                                     "memory_format", "compile", "unlearn_params")}
    key = cache_key(kind="scores", method="mucs", model=model_a.fingerprint(), data=ev.data().fingerprint(),
                    settings=old_settings, ctx_seed=0, label=1, seed=1001,
                    image=cache_key(img=np.asarray(img).tobytes().hex()))
    assert os.path.isfile(os.path.join(ev.work, "attributions", "mucs", f"target001-{key[:16]}.safetensors"))
    pix = cache_key(kind="scores", method="pixel_nn", model=model_a.fingerprint(), data=ev.data().fingerprint(),
                    settings=None, ctx_seed=0, label=1, seed=1001, image=cache_key(img=np.asarray(img).tobytes().hex()))
    assert os.path.isfile(os.path.join(ev.work, "attributions", "pixel_nn", f"target001-{pix[:16]}.safetensors"))
    from mucs.evaluation.plan import settings_key
    assert "screen_noises" not in settings_key(s) and settings_key(s.replace(screen_noises=2))["screen_noises"] == 2
    assert "unlearn_chunk" not in settings_key(s) and settings_key(s.replace(precision="bf16"))["precision"] == "bf16"


def test_training_is_deterministic_for_a_seed_and_removed_set(first_run, tmp_path):
    from safetensors.numpy import load_file
    ev = first_run["ev"]
    torch.set_num_threads(1)
    removed = np.array([1, 5, 9])
    paths = []
    for name in ("a", "b"):
        out = ev_mod.train_without(ev.data(), removed, first_run["cfg"].train_options(), str(tmp_path / name))
        paths.append(load_file(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors")))
    assert paths[0].keys() == paths[1].keys()
    assert all(np.array_equal(paths[0][k], paths[1][k]) for k in paths[0])


def test_model_key_depends_on_removed_set_and_recipe(first_run):
    ev = first_run["ev"]
    assert ev.model_key([3, 1]) == ev.model_key([1, 3])
    assert ev.model_key([1, 3]) != ev.model_key([1, 4])
    other = ev_mod.Evaluation(first_run["cfg"].replace(train_steps=41), first_run["work"], log=lambda m: None)
    assert other.model_key([1, 3]) != ev.model_key([1, 3])


def test_out_is_never_replaced_without_force(first_run, tmp_path, capsys):
    """A published results file is kept unless --force; the work folder's results.json is the default."""
    from mucs.__main__ import main
    work = str(tmp_path / "copy")
    shutil.copytree(first_run["work"], work)
    published = tmp_path / "counterfactual.json"
    published.write_text('{"published": true}')
    base = ["evaluate", "--preset", "tiny", "--data", first_run["cfg"].data, "--work", work, "--cached-only",
            "--methods", ",".join(METHODS), "--threads", "1"]
    assert main(base + ["--out", str(published)]) == 2
    assert "pass --force" in capsys.readouterr().err and published.read_text() == '{"published": true}'
    os.remove(os.path.join(work, "results.json"))
    assert main(base) == 0                                               # default: <work>/results.json
    assert "`mucs+pixel_nn`" in capsys.readouterr().out
    assert json.load(open(os.path.join(work, "results.json")))["complete"]
    assert main(base + ["--out", str(published), "--force"]) == 0
    assert json.loads(published.read_text())["methods"].keys() == first_run["result"]["methods"].keys()


def test_ray_tasks_on_two_local_workers_give_the_serial_table(first_run, tiny_npz, tmp_path):
    """The tiny preset from scratch as Ray tasks on a local Ray instance with 2 CPUs: every retrain
    and attribution is computed once and the table equals the serial run's."""
    import ray
    from mucs.evaluation.engine import RayEngine
    # a local Ray instance: 2 CPUs, 1 per task (3 starts: on a busy machine Ray's agents can start too slowly)
    engine = RayEngine(workers=2, threads=1, start_attempts=3)
    try:
        assert ray.cluster_resources()["CPU"] == 2
        ev = ev_mod.Evaluation(first_run["cfg"], str(tmp_path / "w"), log=lambda m: None, engine=engine, threads=1)
        result = ev.run(METHODS)
    finally:
        engine.close()
    assert not ray.is_initialized()                     # the engine started it, so it shut it down
    cfg = first_run["cfg"]
    assert ev.computed == dict(retrains=1 + cfg.random_repeats + len(METHODS),
                               generations=1 + cfg.random_repeats + len(METHODS), attributions=cfg.targets * 2)
    assert result["timing"]["engine"] == "ray"
    for table in (ev_mod.markdown_table, ev_mod.ci_table, ev_mod.overlap_table):
        assert table(result) == table(first_run["result"])
    expected = _flat(json.loads(json.dumps(first_run["result"]["methods"])))
    got = _flat(json.loads(json.dumps(result["methods"])))
    assert got.keys() == expected.keys() and got == pytest.approx(expected, rel=1e-6, abs=1e-5)
    locks = [f for _, _, files in os.walk(tmp_path / "w") for f in files if f.endswith(".lock")]
    assert locks == []


def _flat(d, prefix=""):
    """{"a": {"b": [1, 2]}} -> {"a/b/0": 1, "a/b/1": 2}: nested results compared number by number."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else None
    if items is None:
        return {prefix: d}
    out = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}/{k}"))
    return out


def test_target_blocks_retrain_per_block_and_block_zero_reuses_the_smaller_run(first_run, tmp_path):
    """--targets 4 --target-block 2: one retrain per block without that block's union; each block's
    targets are measured on their own retrain, controls on every block's; block 0's retrains are the
    2-target run's (cached), and the 2-target run's generated items stay cached beside the 4-target ones."""
    from mucs.evaluation.run import merge_blocks
    work = str(tmp_path / "copy")
    shutil.copytree(first_run["work"], work)
    cfg = first_run["cfg"].replace(targets=4, target_block=2)
    assert cfg.blocks() == [[0, 1], [2, 3]] and first_run["cfg"].blocks() == [[0, 1]]
    spy = RetrainSpy()
    ev = ev_mod.Evaluation(cfg, work, log=lambda m: None, retrain=spy, threads=1)
    result = ev.run(["pixel_nn"])
    before = ev.generated(ev.model_dir([]))
    small = first_run["ev"]
    scores = ev.target_scores("pixel_nn", ev.load(ev.model_dir([])), before["targets"])
    sets = ev.top_sets(scores)
    block0 = sorted(set(np.concatenate(sets[:2]).tolist()))
    block1 = sorted(set(np.concatenate(sets[2:]).tolist()))
    assert block0 in first_run["spy"].calls and block0 not in spy.calls     # block 0: the 2-target retrain, cached
    assert block1 in spy.calls                                              # block 1: retrained now
    assert len(spy.calls) == 1 + cfg.random_repeats                         # block 1 of pixel_nn and of each random
    C = cfg.controls
    assert result["methods"]["pixel_nn"]["targets"]["ssim"]["n"] == 4
    assert result["methods"]["pixel_nn"]["controls"]["ssim"]["n"] == 2 * C
    # the smaller run's items are still cached (its --cached-only table still reports)
    assert small.job.cached_generation(small.model_dir([])) is not None
    again = ev_mod.Evaluation(first_run["cfg"], work, log=lambda m: None, cached_only=True, threads=1)
    assert again.run(METHODS)["methods"]["mucs"] == json.loads(json.dumps(first_run["result"]["methods"]["mucs"]))
    # merging: block b keeps its own targets, controls come from every block
    per = {b: {"targets": {"ssim": np.arange(4) + 10 * b}, "controls": {"ssim": np.arange(2) + 10 * b}} for b in (0, 1)}
    merged = merge_blocks([[0, 1], [2, 3]], per)
    assert merged["targets"]["ssim"].tolist() == [0, 1, 12, 13]
    assert merged["controls"]["ssim"].tolist() == [0, 1, 10, 11]


def test_replicate_seeds_average_each_items_similarity_over_their_own_retrains(first_run, tmp_path):
    """--retrain-seeds 1: seed 1 trains its own model A and retrains every removal (same removed sets,
    the attributions of seed 0's model A); seed 0's chain is the one-seed run's (cached); each item's
    similarity is the mean of the two replicates, and each replicate alone is reported."""
    from mucs.evaluation import run as run_mod
    from mucs.evaluation.engine import SerialEngine
    work = str(tmp_path / "copy")
    shutil.copytree(first_run["work"], work)
    cfg = first_run["cfg"].replace(retrain_seeds=(1, 0, 1))
    assert cfg.seeds() == [0, 1]
    spy = RetrainSpy()
    ev = ev_mod.Evaluation(cfg, work, log=lambda m: None, retrain=spy, threads=1)
    result = ev.run(["pixel_nn"])
    small = first_run["result"]["methods"]
    pix_sets = first_run["ev"].top_sets(first_run["ev"].target_scores(
        "pixel_nn", ev.load(ev.model_dir([])), ev.generated(ev.model_dir([]))["targets"]))
    removed = sorted(set(np.concatenate(pix_sets).tolist()))
    # seed 1 only: model A, pixel_nn's union (the same set as seed 0's) and each random removal
    assert len(spy.calls) == 2 + cfg.random_repeats and [] in spy.calls and removed in spy.calls
    assert ev.model_dir([], 1) != ev.model_dir([]) and ev.model_dir([], 0) == ev.model_dir([])
    with open(os.path.join(ev.model_dir(removed, 1), "mucs_train.json")) as f:
        assert json.load(f)["seed"] == 1
    st = run_mod.run(ev.job, ["pixel_nn"], SerialEngine(), cached_only=True)
    for name in ["pixel_nn"] + [f"random#{r}" for r in range(cfg.random_repeats)]:
        for g in ("targets", "controls"):
            for metric, sim in st.sims[name][g].items():
                reps = [st.by_seed[name][s][g][metric] for s in (0, 1)]
                assert np.allclose(sim, (reps[0] + reps[1]) / 2)
        assert not np.array_equal(st.by_seed[name][0]["targets"]["ssim"], st.by_seed[name][1]["targets"]["ssim"])
    t = result["methods"]["pixel_nn"]["targets"]["ssim"]
    assert t["auc_per_seed"]["0"] == pytest.approx(small["pixel_nn"]["targets"]["ssim"]["auc"])
    assert result["seeds"]["replicate_seeds"] == [0, 1] and result["scale"]["retrain_seeds"] == [1, 0, 1]
    # how much the training seed alone moves the items: model A of seed 1 against model A of seed 0
    rep = result["replicates"]["1"]
    assert set(rep) == {"targets", "controls"} and 0 < rep["targets"]["ssim"] < 1
    assert np.isclose(rep["targets"]["ssim"], st.seed_sims[1]["targets"]["ssim"].mean())
    assert "replicates" in first_run["result"] and first_run["result"]["replicates"] == {}
    assert "per seed 0:" in ev_mod.ci_table(result)
    # the one-seed table is unchanged by the replicate's artefacts next to it
    again = ev_mod.Evaluation(first_run["cfg"], work, log=lambda m: None, cached_only=True, threads=1)
    assert again.run(METHODS)["methods"]["pixel_nn"] == json.loads(json.dumps(small["pixel_nn"]))
    # a replicate whose model A is not in the work folder: --cached-only says so
    with pytest.raises(MucsError, match="seed 2"):
        ev_mod.Evaluation(cfg.replace(retrain_seeds=(2,)), work, log=lambda m: None, cached_only=True).run(["pixel_nn"])


def test_paired_differences_and_method_settings_in_the_results(first_run):
    """The paired MUCS − method rows are the per-target AUC differences (their mean is the difference of the
    two AUCs) and every method's resolved settings are recorded, train_noise included."""
    from mucs.evaluation.metrics import auc, paired_difference
    from mucs.evaluation.report import paired_table
    result = first_run["result"]
    p = result["paired"]["mucs-pixel_nn"]["ssim"]
    a, b = result["methods"]["mucs"]["targets"]["ssim"]["auc"], result["methods"]["pixel_nn"]["targets"]["ssim"]["auc"]
    assert p["auc_difference"] == pytest.approx(a - b)
    assert p["auc_difference_ci95"][0] <= p["auc_difference"] <= p["auc_difference_ci95"][1]
    assert p["items_favouring_a"] + p["items_favouring_b"] <= p["n"] == first_run["cfg"].targets
    assert "`mucs-pixel_nn`" in paired_table(result)
    ms = result["method_settings"]
    assert ms["mucs"]["settings"]["train_noise"] == first_run["cfg"].mucs_settings().train_noise
    assert set(ms) == set(METHODS)
    # by hand: a method that changes every item more than every random removal is 1 - 0 ahead of one that never does
    rnd = np.linspace(0.5, 0.6, 12)
    d = paired_difference(rnd, np.full(6, 0.1), np.full(6, 0.9), "ssim")
    assert d["auc_difference"] == 1.0 == auc(rnd, np.full(6, 0.1)) - auc(rnd, np.full(6, 0.9))
    assert d["items_favouring_a"] == 6 and d["similarity_drop_difference"] == pytest.approx(0.8)
