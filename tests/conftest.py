"""Tiny data and tiny models made here, so the suite runs fast on 2 CPU cores."""
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
