"""Datasets (npz, class folders, flat folders), query conversion, model kinds and objectives."""
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mucs import Attributor, MucsError, QueryImage, Settings, load_dataset, load_model, load_query_image
from mucs.sources.data import MAX_IMAGE_BYTES, TrainingSet
from mucs.sources.models import per_item_loss
from mucs.sources.train import TrainOptions, train

from conftest import make_images


def test_class_folder_dataset_gives_stable_indices_and_labels(tmp_path):
    images, labels = make_images(n=6, classes=2)
    for i, (im, y) in enumerate(zip(images, labels)):
        d = tmp_path / ("cats" if y == 0 else "dogs")
        d.mkdir(exist_ok=True)
        Image.fromarray(im[..., 0]).save(d / f"{i:03d}.png")
    (tmp_path / "cats" / "readme.txt").write_text("ignored")
    ds = load_dataset(str(tmp_path))
    assert len(ds) == 6 and ds.class_names == ["cats", "dogs"] and ds.channels == 1
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.files[:2] == ["cats/000.png", "cats/002.png"]
    assert np.array_equal(ds.images[0], images[0]) and np.array_equal(ds.images[3], images[1])
    assert load_dataset(str(tmp_path)).fingerprint() == ds.fingerprint()


def test_image_folder_is_decoded_once_and_again_when_a_file_changes(tmp_path, monkeypatch):
    """The second load of an image folder reads the decoded cache (memory-mapped, same pixels and
    fingerprint) without decoding any file; a changed file's bytes change the key and it decodes again."""
    import mucs.sources.folder_data as data_mod   # where image folders are decoded
    monkeypatch.setenv("MUCS_CACHE_DIR", str(tmp_path / "cache"))
    images, labels = make_images(n=8, classes=2)
    root = tmp_path / "set"
    for i, (im, y) in enumerate(zip(images, labels)):
        (root / f"c{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im[..., 0]).save(root / f"c{y}" / f"{i}.png")
    first = load_dataset(str(root))
    assert not isinstance(first.images, np.memmap)

    def no_decoding(*a, **k):
        raise AssertionError("decoded a file although the folder is cached")
    monkeypatch.setattr(data_mod.Image, "open", no_decoding)
    again = load_dataset(str(root))
    assert isinstance(again.images, np.memmap) and np.array_equal(again.images, first.images)
    assert again.labels.tolist() == first.labels.tolist() and again.files == first.files
    assert again.fingerprint() == first.fingerprint()
    monkeypatch.undo()
    monkeypatch.setenv("MUCS_CACHE_DIR", str(tmp_path / "cache"))
    changed = np.full_like(images[0][..., 0], 7)
    Image.fromarray(changed).save(root / first.files[0])      # same name, new content
    third = load_dataset(str(root))
    assert np.array_equal(third.images[0][..., 0], changed) and third.fingerprint() != first.fingerprint()
    assert len(os.listdir(tmp_path / "cache" / "decoded")) == 2


def test_flat_folder_is_unconditional_and_rgb_npz(tmp_path):
    images, _ = make_images(n=3, channels=3)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    ds = load_dataset(str(tmp_path))
    assert ds.labels is None and ds.channels == 3 and ds.num_classes is None
    np.savez(tmp_path / "x.npz", images=images)
    assert load_dataset(str(tmp_path / "x.npz")).images.shape == (3, 8, 8, 3)
    np.savez(tmp_path / "bad.npz", pixels=images)
    with pytest.raises(MucsError, match="no 'images'"):
        load_dataset(str(tmp_path / "bad.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MucsError, match="cannot read dataset"):
        load_dataset(str(tmp_path / "junk.npz"))


def _png(im: Image.Image) -> bytes:
    b = io.BytesIO()
    im.save(b, format="PNG")
    return b.getvalue()


def test_query_conversion_alpha_16bit_size_and_limits():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))           # fully transparent → white
    q = load_query_image(_png(rgba), channels=1, size=8)
    assert q.x.shape == (1, 8, 8) and torch.allclose(q.x, torch.ones_like(q.x))
    assert any("alpha" in n for n in q.conversions)
    a16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    q = load_query_image(_png(Image.fromarray(a16)), channels=3, size=4)
    assert q.x.shape == (3, 4, 4) and any("8 bits" in n for n in q.conversions)
    assert any("resized" in n for n in q.conversions)
    # on a training set's background (issue 23): a black-background set gets black, and a warning
    half = np.zeros((8, 8, 4), np.uint8)
    half[:4] = (200, 200, 200, 255)                          # top half opaque grey, bottom transparent
    q = load_query_image(_png(Image.fromarray(half, "RGBA")), channels=1, size=8, background=(0,))
    assert (q.uint8[:4] == 200).all() and (q.uint8[4:] == 0).all()
    assert any(n.startswith("warning:") and "background (black" in n for n in q.conversions)
    q = load_query_image(_png(Image.fromarray(half, "RGBA")), channels=3, size=8, background=(90, 120, 150))
    assert q.uint8[7, 0].tolist() == [90, 120, 150] and any("RGB 90,120,150" in n for n in q.conversions)
    imgs = np.zeros((3, 6, 6, 1), np.uint8)
    imgs[:, 2:4, 2:4] = 255                                  # bright centres, black borders
    assert TrainingSet(imgs).background() == (0,)
    assert TrainingSet(np.full((2, 4, 4, 3), 250, np.uint8)).background() == (250, 250, 250)
    exact = load_query_image(np.full((8, 8, 1), 255, np.uint8), channels=1, size=8)
    assert exact.conversions == [] and float(exact.x.min()) == 1.0
    with pytest.raises(MucsError, match="larger than"):
        load_query_image(b"\x00" * (MAX_IMAGE_BYTES + 1), 1, 8)
    with pytest.raises(MucsError, match="not a readable image"):
        load_query_image(b"GIF89a\x00\x00garbage", 1, 8)
    with pytest.raises(MucsError, match="pixels"):
        load_query_image(_png(Image.new("L", (8000, 6000))), 1, 8)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_per_item_loss_targets(pred):
    def Echo():   # predicts its input: the loss then has a closed form
        return lambda x, t, cond: x
    ac = torch.linspace(0.99, 0.01, 10)
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([2, 7])
    a = ac[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[pred]
    got = per_item_loss(Echo(), ac, pred, x0, None, t, eps)
    assert torch.allclose(got, ((target - xt) ** 2).flatten(1).mean(1))



@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
def test_per_item_loss_noises_as_diffusers_add_noise_and_get_velocity(kind):
    """per_item_loss keeps its own x_t and v (see the comment there); for the DDPM/DDIM schedulers they
    are diffusers' add_noise and get_velocity bit for bit."""
    import diffusers
    sched = getattr(diffusers, kind)(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    seen = []

    def Zero():    # records x_t, predicts 0: the loss is then mean(target²)
        return lambda x, t, cond: seen.append(x) or torch.zeros_like(x)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1, torch.randn(16, 3, 8, 8, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)
    ac = sched.alphas_cumprod.to(torch.float32)
    got_v = per_item_loss(Zero(), ac, "v_prediction", x0, None, t, eps)
    assert torch.equal(seen[0], sched.add_noise(x0, eps, t))
    assert torch.equal(got_v, (sched.get_velocity(x0, eps, t) ** 2).flatten(1).mean(1))

def test_ema_by_diffusers_follows_the_hand_written_rule():
    """train() averages with diffusers' EMAModel (mucs.sources.train.ema_averager); the decays and the
    averages are those of the rule it replaced (frozen here): d = min(decay, (1+s)/(10+s)) at step s."""
    import copy
    from mucs.sources.train import ema_averager
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 2, 1))
    old = copy.deepcopy(net)
    av = ema_averager(net.parameters(), 0.9)
    for step in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        av.step(net.parameters())
        with torch.no_grad():       # the old update rule
            d = min(0.9, (1 + step) / (10 + step))
            for pe, p in zip(old.parameters(), net.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        assert av.cur_decay_value == pytest.approx(d, rel=1e-12)
    got = copy.deepcopy(net)
    av.copy_to(got.parameters())
    for a, b in zip(got.parameters(), old.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)

@pytest.mark.parametrize("pred", ["v_prediction", "sample"])
def test_unconditional_rgb_model_end_to_end(tmp_path, pred):
    images, _ = make_images(n=12, channels=3)
    np.savez(tmp_path / "rgb.npz", images=images)
    ds = load_dataset(str(tmp_path / "rgb.npz"))
    train(ds, str(tmp_path / "m"), TrainOptions(steps=5, batch_size=8, channels=(8, 16), attention=False,
                                                 prediction_type=pred))
    m = load_model(str(tmp_path / "m"))
    assert m.num_classes is None and m.channels == 3 and m.prediction_type == pred
    with pytest.raises(MucsError, match="unconditional"):
        m.check_label(0)
    s = Settings(noises=4, batch_size=8, null_batches=2, null_batch_size=8, max_steps=2, top_k=3)
    # 5 steps leave the network untrained (its loss is L_null's): the check refuses it, this plumbing test allows it
    with pytest.raises(MucsError, match="does not look trained"):
        Attributor(m, ds, s, cache_dir=str(tmp_path / "c")).attribute(QueryImage(ds.tensor([0])[0], []), None)
    r = Attributor(m, ds, s, cache_dir=str(tmp_path / "c"), allow_untrained=True).attribute(
        QueryImage(ds.tensor([0])[0], []), None)
    assert r.scores.shape == (12,) and np.isfinite(r.scores).all() and r.query["label"] is None


def test_broken_model_folder(tmp_path, tiny_model_dir):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"broken")
    with pytest.raises(MucsError, match="cannot load the model"):
        load_model(str(bad))
    if torch.cuda.is_available():    # a device index past the last card
        with pytest.raises(MucsError, match="device"):
            load_model(tiny_model_dir, device=f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(MucsError, match="CUDA is not available"):
            load_model(tiny_model_dir, device="cuda:0")
