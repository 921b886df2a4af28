"""Tiny data and tiny models made here, so the suite runs fast on 2 CPU cores."""
import contextlib
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# caches a test does not place itself (e.g. decoded image folders) go to a throwaway folder, not ~/.cache/mucs
if "MUCS_CACHE_DIR" not in os.environ:
    import tempfile
    os.environ["MUCS_CACHE_DIR"] = tempfile.mkdtemp(prefix="mucs-test-cache-")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


REQUIRE_ALL = os.environ.get("MUCS_REQUIRE_ALL") == "1"   # .ci/run sets it: CI must not skip what it installed


def need(ok: bool, what: str) -> None:
    """Skip when a system prerequisite is missing on a developer's machine; fail in CI
    (MUCS_REQUIRE_ALL=1), where `.ci/run` installed it and a skip would hide a broken install."""
    if ok:
        return
    if REQUIRE_ALL:
        pytest.fail(f"{what} (MUCS_REQUIRE_ALL=1: CI installs it, so this is an error)", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def set_settings_defaults(monkeypatch, **changes) -> None:
    """Change what `Settings()` gives for the test's duration. A dataclass bakes its defaults into
    `__init__`, so patching the class attributes (as these tests once did) changes nothing."""
    import inspect

    from mucs.settings import Settings
    init = Settings.__init__
    names = list(inspect.signature(init).parameters)[1:]
    defaults = list(init.__defaults__)
    first = len(names) - len(defaults)
    for k, v in changes.items():
        defaults[names.index(k) - first] = v
    monkeypatch.setattr(init, "__defaults__", tuple(defaults))


def make_images(n=32, size=8, channels=1, classes=4, seed=0):
    """Distinct, smooth-ish random images (blocky patterns) with balanced labels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, size // 2, size // 2, channels))
    images = coarse.repeat(2, 1).repeat(2, 2).astype(np.uint8)
    labels = np.arange(n) % classes
    return images, labels


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
    """32 grayscale 8x8 images in 4 classes, as an .npz."""
    images, labels = make_images()
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=images[..., 0], labels=labels, class_names=np.array(["a", "b", "c", "d"]))
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_npz):
    """A tiny class-conditional UNet trained (briefly) on tiny_npz with `mucs.sources.train`."""
    from mucs.sources.data import load_dataset
    from mucs.sources.train import TrainOptions, train
    out = str(tmp_path_factory.mktemp("models") / "tiny")
    train(load_dataset(tiny_npz), out, TrainOptions(steps=300, batch_size=32, lr=2e-3, channels=(8, 16),
                                                   attention=False, warmup_steps=20, ema_decay=0.99))
    return out


@pytest.fixture()
def fast_settings():
    """Small but complete MUCS settings for the tiny model."""
    from mucs.settings import Settings
    return Settings(noises=16, batch_size=32, null_batches=10, null_batch_size=32, max_steps=40, top_k=5)


# --- a tiny text-conditional latent model (Stable Diffusion's layout) ------------------------------------
WORDS = (("dark", "light"), ("ring", "square"))


def _tiny_text_settings():
    from mucs.settings import Settings
    return Settings(noises=4, batch_size=8, null_batches=2, null_batch_size=16, max_steps=3, top_k=3, eval_batch_size=64)


TINY_TEXT = _tiny_text_settings()


def captioned(n=24, size=8, seed=0):
    """n grayscale images and captions "a <dark|light> <ring|square>" (4 caption groups), as a TrainingSet."""
    from mucs.sources.data import TrainingSet
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, size // 2, size // 2, 1))
    images = coarse.repeat(2, 1).repeat(2, 2).astype(np.uint8)
    caps = [f"a {WORDS[0][i % 2]} {WORDS[1][(i // 2) % 2]}" for i in range(n)]
    return TrainingSet(images=images, captions=caps, source="captioned")


def build_sd(folder, data, steps=120, seed=0):
    """A tiny Stable-Diffusion-layout pipeline (CLIP tokenizer + text encoder, VAE, UNet2DConditionModel),
    trained `steps` steps on `data` (latents and captions), saved as a pipeline folder."""
    import shutil
    from diffusers import DDPMScheduler
    from mucs.sources import tiny
    from mucs.sources.finetune import fit, save_pipeline
    from mucs.sources.models import DiffusionModel
    tok = tiny.write_clip_tokenizer(folder + "-tok", tiny.words_of(data.captions), 16)
    m = DiffusionModel(unet=tiny.unet_condition(size=data.size // 2, channels=4, cross_dim=32, seed=seed),
                       scheduler=DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2"),
                       vae=tiny.vae(data.channels, 4, (16, 32), seed=seed),
                       text_encoder=tiny.clip_text_encoder(len(tok), 32, seed=seed), tokenizer=tok)
    losses = fit(m, data, steps, batch_size=16, lr=3e-3, seed=seed, cond_dropout=0.1)
    save_pipeline(m, folder, dict(lr=3e-3, steps=steps, final_loss=float(np.mean(losses[-10:]))))
    shutil.rmtree(folder + "-tok")
    return folder


@pytest.fixture(scope="session")
def tiny_captions_npz(tmp_path_factory):
    """24 grayscale 8x8 images with 4 distinct captions, as an .npz with a `captions` array."""
    d = captioned()
    path = tmp_path_factory.mktemp("captions") / "captioned.npz"
    np.savez(path, images=d.images[..., 0], captions=np.array(d.captions))
    return str(path)


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory):
    """A tiny Stable-Diffusion-layout pipeline folder trained briefly on tiny_captions_npz's set."""
    return build_sd(str(tmp_path_factory.mktemp("text-models") / "sd"), captioned())


def damaged_runs(good: str, root) -> dict:
    """Copies of the run folder `good` in folder `root`, each with one file broken as a hand edit or a
    hostile user would break it (issue 21): {run id: a phrase the refusal names}."""
    import io
    import json

    def edit_result(r, **changes):
        r = dict(r)
        r.update(changes)
        return json.dumps(r)
    result = json.load(open(os.path.join(good, "result.json")))
    with np.load(os.path.join(good, "losses.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    n = len(arrays["scores"])

    def npz(**changes):
        buf = io.BytesIO()
        np.savez(buf, **{k: v for k, v in dict(arrays, **changes).items() if v is not None})
        return buf.getvalue()

    small = io.BytesIO()
    from PIL import Image
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(small, format="PNG")
    deep = "[" * 100_000 + "]" * 100_000
    variants = {
        "result-list": ("result.json", "[]", "must be a JSON object"),
        "settings-list": ("result.json", edit_result(result, settings=[1, 2]), "settings must be an object"),
        "meta-list": ("meta.json", "[]", "meta.json: must be a JSON object"),
        "result-deep": ("result.json", deep, "nested too deeply"),
        "meta-deep": ("meta.json", deep, "nested too deeply"),
        "meta-kind-object": ("meta.json", json.dumps({"kind": {"a": 1}}), "kind must be a plain value"),
        "settings-bad-type": ("result.json", edit_result(result, settings=dict(result["settings"], noises="x")),
                              "noises must be an integer"),
        "top-out-of-range": ("result.json", edit_result(result, top_k=[n + 5]), f"top_k index {n + 5}"),
        "top-strings": ("result.json", edit_result(result, top_k=["a"]), "top_k must be"),
        "converged-text": ("result.json", edit_result(result, converged="yes"), "converged must be"),
        "loss-null-nan": ("result.json", edit_result(result, loss_null=float("nan")), "loss_null must be a finite"),
        "stage-times-text": ("result.json", edit_result(result, stage_times={"total": "x"}), "stage_times"),
        "curve-object": ("result.json", edit_result(result, curve={}), "curve must be"),
        "levels-numbers": ("result.json", edit_result(result, noise_levels=[1, 2]), "noise_levels"),
        "label-float": ("result.json", edit_result(result, query=dict(result["query"], label=1.5)), "query.label"),
        "data-number": ("result.json", edit_result(result, data=5), "data must be a string"),
        "scores-nan": ("losses.npz", npz(scores=np.full(n, np.nan)), "scores holds NaN"),
        "scores-short": ("losses.npz", npz(scores=arrays["scores"][:-1]), "one entry per training item"),
        "scores-2d": ("losses.npz", npz(scores=arrays["scores"][:, None]), "one entry per training item"),
        "npz-text": ("losses.npz", b"just text", "not an .npz archive"),
        "npz-objects": ("losses.npz", npz(scores=np.array([object()] * n)), "Python objects"),
        "npz-no-loss": ("losses.npz", npz(loss_original=None), "no loss_original"),
        "labels-negative": ("losses.npz", npz(labels=-np.ones(n, np.int64)), "labels must be ≥ 0"),
        "csv-garbage": ("losses.npz+scores.csv", npz(labels=None), "cannot read its labels"),
        "query-huge": ("query.png", huge_png(), "far larger than a query"),
        "query-text": ("query.png", b"not a png", "not a readable PNG"),
        "query-wrong-size": ("query.png", small.getvalue(), "query.png is 5x5x1"),
        # issue 21, point 8: more hand edits (missing keys, wrong types inside lists and settings)
        "curve-no-step": ("result.json", edit_result(result, curve=[{"loss_f": 1.0}]), "curve entries must be"),
        "curve-text": ("result.json", edit_result(result, curve=[{"step": "a", "loss_f": "b", "loss_r": None}]),
                       "curve entries must be"),
        "top-missing": ("result.json", json.dumps({k: v for k, v in result.items() if k != "top_k"}), "top_k must be"),
        "steps-float": ("result.json", edit_result(result, unlearning_steps=1.5), "unlearning_steps must be"),
        "tol-text": ("result.json", edit_result(result, settings=dict(result["settings"], tol="x")), "tol must be"),
        "fingerprint-number": ("result.json", edit_result(result, data_fingerprint=5), "data_fingerprint must be"),
        "scores-int": ("losses.npz", npz(scores=np.arange(n)), "scores must be a 1-D float array"),
        "unlearned-inf": ("losses.npz", npz(loss_unlearned=np.full(n, np.inf)), "loss_unlearned holds NaN or inf"),
    }
    return _write_variants(good, root, variants)


def _write_variants(good: str, root, variants: dict) -> dict:
    """Each variant (run id: (file, its new bytes or text, phrase)) as a copy of `good` in `root`."""
    import shutil
    out = {}
    for name, (file, body, phrase) in variants.items():
        d = os.path.join(str(root), name)
        shutil.copytree(good, d)
        if file == "losses.npz+scores.csv":
            with open(os.path.join(d, "scores.csv"), "w") as f:
                f.write("rank,index,score,label\n1,zz,0.1,oops\n")
            file = "losses.npz"
        with open(os.path.join(d, file), "wb") as f:
            f.write(body if isinstance(body, bytes) else body.encode())
        out[name] = phrase
    return out


def huge_png(w=12000, h=12000) -> bytes:
    """A 1-bit PNG of w×h: ~20 KB on disk, far larger decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\0" * ((w + 7) // 8 + 1) * h, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def assert_same_unlearning(whole, parts, model, moved_at_least: float = 1e-5):
    """Two unlearning runs (e.g. whole batch vs micro-batches) took the same steps: curves and weights
    equal to float tolerance, and the weights did move from `model`'s (so the comparison means something)."""
    import torch
    assert whole.steps == parts.steps
    for a, b in zip(whole.curve, parts.curve):
        assert a["loss_f"] == pytest.approx(b["loss_f"], rel=1e-5)
        assert a["loss_r"] == pytest.approx(b["loss_r"], rel=1e-5, abs=1e-7)
    for (n, p), q in zip(whole.unet.named_parameters(), parts.unet.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)
    assert max((p - q).abs().max().item() for p, q in zip(whole.unet.parameters(), model.unet.parameters())) > moved_at_least


@pytest.fixture()
def fast_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MUCS_CACHE_DIR", str(tmp_path / "cache"))
    set_settings_defaults(monkeypatch, null_batches=3, null_batch_size=16)
    from mucs.settings import Settings
    assert Settings().null_batches == 3


@pytest.fixture()
def work(tmp_path):
    """A folder with a precious user file, a query image and an empty place for outputs."""
    w = tmp_path / "w"
    w.mkdir()
    (w / "thesis.tex").write_text("precious")
    return w


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, tiny_npz):
    """The app under test (tests/test_app*.py): an Explorer on the tiny model, its page, its events by
    API name, and its folder."""
    import app
    from app_fixtures import FAST
    from mucs.explorer import Explorer
    root = tmp_path_factory.mktemp("app")
    with cache_dir_env(root / "cache"):
        ex = Explorer(tiny_model_dir, tiny_npz, FAST, runs_dir=str(root / "runs"), examples_dir=None)
        demo = app.build(ex)
        yield ex, demo, {f.api_name: f for f in demo.fns.values()}, root


@contextlib.contextmanager
def cache_dir_env(path):
    """$MUCS_CACHE_DIR set to `path` while a (module-scoped) fixture's objects live, then restored."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MUCS_CACHE_DIR", str(path))
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def two_runs(env):
    """Two stored runs of the app under test (training items 3 and 7 as queries)."""
    ex, _, _, _ = env
    ids = []
    for i in (3, 7):
        rid, _ = ex.attribute(ex.training_item(i))
        ids.append(rid)
    return ids


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on 127.0.0.1 with --auth (tests/test_http*.py), its Explorer, base URL, port and folder."""
    import app
    from http_helpers import AUTH, SECRET, SMALL, free_port
    from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL
    from mucs.explorer import Explorer
    root = tmp_path_factory.mktemp("http")
    (root / "secret.txt").write_text(SECRET)           # next to the runs folder, not in it
    mp = pytest.MonkeyPatch()
    mp.setenv("MUCS_CACHE_DIR", str(root / "cache"))
    ex = Explorer(DEFAULT_MODEL, DEFAULT_DATA, SMALL, runs_dir=str(root / "runs"), examples_dir=None)
    demo = app.build(ex)
    port = free_port()
    app.launch(demo, ex, port=port, auth=AUTH, prevent_thread_lock=True, quiet=True)
    try:
        yield dict(ex=ex, url=f"http://127.0.0.1:{port}/", port=port, root=root, demo=demo,
                   fns={f.api_name: f for f in demo.fns.values()})
    finally:
        demo.close()
        mp.undo()
