"""Every common diffusers layout loads (root level, unet/ + scheduler/, pipeline folders, a Hub id in
the local cache, any scheduler with ᾱ) and gives the same loss as the UNet it was saved from; what
`mucs train` saves opens with DDPMPipeline.from_pretrained; missing training lr and missing default
assets are clear."""
import json
import logging
import os

import numpy as np
import pytest
import torch

from mucs.errors import MucsError
from mucs.sources.models import load_model, per_item_loss


def tiny_unet(num_class_embeds=None):
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, layers_per_block=1, num_class_embeds=num_class_embeds).eval()


def make_scheduler(kind="ddpm"):
    from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}[kind]
    return cls(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")


def loss_of(unet, scheduler):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((4, 1, 8, 8), generator=g) * 2 - 1
    t = torch.tensor([0, 10, 50, 99])
    eps = torch.randn((4, 1, 8, 8), generator=g)
    ac = scheduler.alphas_cumprod.to(torch.float32)
    with torch.no_grad():
        from mucs.sources.families import family_of
        return per_item_loss(lambda x, t, c: family_of(unet).predict(unet, x, t, c), ac, scheduler.config.prediction_type,
                             x0, None, t, eps)


def save_layout(layout, unet, scheduler, folder):
    """Write `unet` + `scheduler` into `folder` as the named layout."""
    from diffusers import DDIMPipeline, DDPMPipeline
    folder = str(folder)
    if layout == "root":           # as google/ddpm-cifar10-32: config.json, weights, scheduler_config.json on top
        unet.save_pretrained(folder, safe_serialization=True)
        scheduler.save_pretrained(folder)
    elif layout == "subfolders":   # unet/ + scheduler/, no model_index.json
        unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
        scheduler.save_pretrained(os.path.join(folder, "scheduler"))
    elif layout == "ddpm_pipeline":
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    elif layout == "ddim_pipeline":
        DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    elif layout == "renamed_pipeline":   # model_index.json naming other subfolders
        unet.save_pretrained(os.path.join(folder, "denoiser"), safe_serialization=True)
        scheduler.save_pretrained(os.path.join(folder, "noise"))
        with open(os.path.join(folder, "model_index.json"), "w") as f:
            json.dump({"_class_name": "DDPMPipeline", "denoiser": ["diffusers", "UNet2DModel"],
                       "noise": ["diffusers", type(scheduler).__name__]}, f)
    else:
        raise ValueError(layout)
    return folder


@pytest.mark.parametrize("layout", ["root", "subfolders", "ddpm_pipeline", "ddim_pipeline", "renamed_pipeline"])
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_each_layout_loads_with_the_same_loss(layout, kind, tmp_path):
    unet, sched = tiny_unet(), make_scheduler(kind)
    m = load_model(save_layout(layout, unet, sched, tmp_path / "m"), "cpu")
    # DDIMPipeline turns any scheduler into a DDIMScheduler (same ᾱ) when it is built
    assert type(m.scheduler).__name__ == ("DDIMScheduler" if layout == "ddim_pipeline" else type(sched).__name__)
    assert torch.equal(m.scheduler.alphas_cumprod, sched.alphas_cumprod)
    assert m.size == 8 and m.channels == 1 and m.num_classes is None
    assert torch.allclose(loss_of(m.unet, m.scheduler), loss_of(unet, sched), atol=1e-6)


def test_any_scheduler_with_alphas_cumprod(tmp_path):
    unet, sched = tiny_unet(), make_scheduler("euler")
    m = load_model(save_layout("root", unet, sched, tmp_path / "m"), "cpu")
    assert type(m.scheduler).__name__ == "EulerDiscreteScheduler"
    assert torch.allclose(loss_of(m.unet, m.scheduler), loss_of(unet, sched), atol=1e-6)


def test_scheduler_without_alphas_cumprod_is_refused(tmp_path):
    from diffusers import ScoreSdeVeScheduler
    folder = tmp_path / "m"
    tiny_unet().save_pretrained(str(folder), safe_serialization=True)
    ScoreSdeVeScheduler().save_pretrained(str(folder))
    with pytest.raises(MucsError, match="alphas_cumprod"):
        load_model(str(folder), "cpu")


def test_unknown_scheduler_class_falls_back_to_ddpm_with_a_warning(tmp_path, caplog):
    folder = save_layout("root", tiny_unet(), make_scheduler(), tmp_path / "m")
    cfg_path = os.path.join(folder, "scheduler_config.json")
    cfg = json.load(open(cfg_path))
    cfg["_class_name"] = "MyPrivateScheduler"
    json.dump(cfg, open(cfg_path, "w"))
    with caplog.at_level(logging.WARNING, logger="mucs"):
        m = load_model(folder, "cpu")
    assert type(m.scheduler).__name__ == "DDPMScheduler"
    assert "MyPrivateScheduler" in caplog.text


def test_pickled_weights_are_refused_clearly(tmp_path):
    folder = tmp_path / "m"
    tiny_unet().save_pretrained(str(folder), safe_serialization=False)
    make_scheduler().save_pretrained(str(folder))
    with pytest.raises(MucsError, match="safetensors"):
        load_model(str(folder), "cpu")


def test_not_a_model_folder(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(MucsError, match="not a diffusers model folder"):
        load_model(str(tmp_path / "m"), "cpu")
    with pytest.raises(MucsError, match="model folder not found"):
        load_model(str(tmp_path / "nope"), "cpu")


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in tmp_path, used by huggingface_hub for this test."""
    import huggingface_hub.constants
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_from_the_local_cache(hf_cache, monkeypatch):
    unet, sched = tiny_unet(), make_scheduler()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / "models--someorg--tiny-ddpm"
    save_layout("root", unet, sched, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)   # offline is the user's choice: not forced
    m = load_model("someorg/tiny-ddpm", "cpu")
    assert "HF_HUB_OFFLINE" not in os.environ
    assert m.path.endswith(commit)
    assert torch.allclose(loss_of(m.unet, m.scheduler), loss_of(unet, sched), atol=1e-6)


def test_hub_id_not_in_the_cache_is_a_clear_error(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MucsError, match="local Hugging Face cache"):
        load_model("someorg/not-downloaded", "cpu")


def test_missing_training_lr_warns_once_and_train_lr_sets_it(tmp_path, caplog):
    folder = save_layout("subfolders", tiny_unet(), make_scheduler(), tmp_path / "m")
    m = load_model(folder, "cpu")
    with caplog.at_level(logging.WARNING, logger="mucs"):
        assert m.learning_rate is None and m.learning_rate is None
    assert caplog.text.count("--train-lr") == 1
    assert load_model(folder, "cpu", train_lr=2e-4).learning_rate == 2e-4
    with pytest.raises(MucsError, match=r"--train-lr must be in \[1e-08, 10\]"):
        load_model(folder, "cpu", train_lr=0.0)


def test_train_lr_and_column_flags_on_attribute():
    from mucs.__main__ import build_parser
    a = build_parser().parse_args(["attribute", "--image", "q.png", "--train-lr", "2e-4",
                                   "--image-column", "img", "--label-column", "y"])
    assert (a.train_lr, a.image_column, a.label_column) == (2e-4, "img", "y")
    a = build_parser().parse_args(["attribute", "--image", "q.png"])
    assert (a.train_lr, a.image_column, a.label_column) == (None, None, None)


def test_mucs_train_saves_a_pipeline_folder(tmp_path):
    from diffusers import DDPMPipeline

    from mucs.sources.data import TrainingSet
    from mucs.sources.train import TrainOptions, train
    rng = np.random.default_rng(0)
    data = TrainingSet(images=rng.integers(0, 256, (8, 8, 8, 1)).astype(np.uint8), labels=np.arange(8) % 2,
                       class_names=["a", "b"])
    out = str(tmp_path / "trained")
    train(data, out, TrainOptions(steps=2, batch_size=4, channels=(8, 16), attention=False, warmup_steps=1,
                                  num_train_timesteps=100))
    assert json.load(open(os.path.join(out, "model_index.json")))["_class_name"] == "DDPMPipeline"
    pipe = DDPMPipeline.from_pretrained(out)
    m = load_model(out, "cpu")
    assert m.learning_rate is not None and m.class_names == ["a", "b"]
    assert torch.equal(pipe.scheduler.alphas_cumprod, m.scheduler.alphas_cumprod)
    for (k1, v1), (k2, v2) in zip(sorted(pipe.unet.state_dict().items()), sorted(m.unet.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2)


def test_missing_default_assets_are_a_clear_error(tmp_path, monkeypatch):
    import mucs.defaults as d
    from mucs.sources.data import load_dataset
    monkeypatch.setattr(d, "DEFAULT_MODEL", str(tmp_path / "assets" / "fashion16"))
    monkeypatch.setattr(d, "DEFAULT_DATA", str(tmp_path / "assets" / "fashion.npz"))
    with pytest.raises(MucsError, match="ships with the repository.*MUCS_ASSETS"):
        load_model(d.DEFAULT_MODEL, "cpu")
    with pytest.raises(MucsError, match="MUCS_ASSETS"):
        load_dataset(d.DEFAULT_DATA)


def test_assets_and_runs_folders(tmp_path, monkeypatch):
    import mucs.defaults as d
    monkeypatch.setenv("MUCS_ASSETS", str(tmp_path / "a"))
    assert d.assets_dir() == str(tmp_path / "a")
    monkeypatch.delenv("MUCS_ASSETS")
    assert d.assets_dir() == os.path.join(d.REPO, "assets")

    monkeypatch.setenv("MUCS_RUNS_DIR", str(tmp_path / "r"))
    assert d.default_runs_dir() == str(tmp_path / "r")
    monkeypatch.delenv("MUCS_RUNS_DIR")
    assert d.default_runs_dir() == os.path.join(d.REPO, "runs")   # this checkout
    # installed into site-packages: a per-user folder, never beside the package
    monkeypatch.setattr(d, "REPO", str(tmp_path / "site-packages"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(d.sys, "platform", "linux")
    assert d.default_runs_dir() == str(tmp_path / "xdg" / "mucs" / "runs")


def test_a_hub_models_recommended_settings_are_read_by_the_app_too(hf_cache, monkeypatch, tmp_path, tiny_npz):
    """The app (Explorer) reads mucs_settings.json from the resolved snapshot folder of a Hub id, as the
    CLI does, not from the raw id string (where it would silently find nothing)."""
    import json
    from mucs.explorer.state import Explorer
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    snap = hf_cache / "models--someorg--tiny-cond" / "snapshots" / commit
    save_layout("root", tiny_unet(num_class_embeds=4), make_scheduler(), snap)
    (snap / "mucs_settings.json").write_text(json.dumps({"settings": {"noises": 7}}))
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(commit)
    ex = Explorer("someorg/tiny-cond", tiny_npz, runs_dir=str(tmp_path / "runs"), examples_dir=None)
    assert ex.settings.noises == 7
    # one resolution for every entry point: the Python API without settings uses them too
    from mucs.method.attribute import Attributor
    from mucs.sources.data import load_dataset
    assert Attributor(load_model("someorg/tiny-cond"), load_dataset(tiny_npz)).settings.noises == 7
