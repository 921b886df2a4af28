"""Every model family attributes end to end (or is refused with one line): tiny components built here,
saved with save_pretrained in the layouts users bring, loaded back through `load_model`, attributed
through the Attributor, the CLI and the Explorer back end; no load path yields a random network."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from mucs.errors import MucsError
from mucs.sources import tiny
from mucs.sources.data import QueryImage, TrainingSet, load_dataset, to_model_range

from conftest import TINY_TEXT as TINY, assert_same_unlearning, captioned  # noqa: E402


def _scheduler(T=100):
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")


@pytest.fixture(scope="module")
def sd_dir(tiny_text_dir):
    return tiny_text_dir


@pytest.fixture(scope="module")
def data_npz(tiny_captions_npz):
    return tiny_captions_npz


def test_stable_diffusion_layout_loads_as_a_text_conditional_latent_model(sd_dir, data_npz, tmp_path):
    from mucs.sources.models import load_model
    m = load_model(sd_dir)
    assert (m.family.name, m.conditioning, m.latent) == ("unet2d_condition", "text", True)
    assert (m.size, m.channels, m.x0_shape) == (8, 1, (4, 4, 4)) and m.num_classes is None
    # diffusers itself opens what save_pipeline wrote
    from diffusers import StableDiffusionPipeline
    assert StableDiffusionPipeline.from_pretrained(sd_dir).unet.config.cross_attention_dim == 32
    # the same components in subfolders without model_index.json
    bare = tmp_path / "bare"
    shutil.copytree(sd_dir, bare)
    os.remove(bare / "model_index.json")
    assert load_model(str(bare)).fingerprint() == m.fingerprint()
    # only unet/ + scheduler/ of a text model: refused in one line, nothing random loaded
    only = tmp_path / "only"
    for sub in ("unet", "scheduler"):
        shutil.copytree(os.path.join(sd_dir, sub), only / sub)
    with pytest.raises(MucsError, match="text_encoder/ and tokenizer/"):
        load_model(str(only))
    with pytest.raises(MucsError, match="this model is text-conditional: give a prompt"):
        m.check_label(1)
    with pytest.raises(MucsError, match="a prompt is required"):
        m.check_prompt("  ")


def test_text_model_attributes_from_latents_and_caption_embeddings(sd_dir, data_npz, tmp_path):
    from mucs.method.attribute import Attributor
    from mucs.sources.models import load_model
    m, d = load_model(sd_dir), load_dataset(data_npz)
    assert d.captions[:2] == ["a dark ring", "a light ring"]
    cache = str(tmp_path / "cache")
    a = Attributor(m, d, TINY, cache_dir=cache)
    q = QueryImage(to_model_range(d.images[5]), [])
    r = a.attribute(q, prompt=d.captions[5])
    assert r.scores.shape == (24,) and np.isfinite(r.scores).all() and r.query["prompt"] == d.captions[5]
    assert r.info["model_family"] == "unet2d_condition" and r.info["latent_shape"] == [4, 4, 4]
    assert r.info["trained_loss"] < 0.8 * r.loss_null
    assert len(np.unique(np.round(r.scores, 6))) > 12            # not tied
    # latents and caption embeddings were cached once, memory-mapped, keyed by the encoders
    names = sorted(os.listdir(cache))
    assert any(n.startswith("latents-") for n in names) and any(n.startswith("captions-") for n in names)
    inputs = a.inputs()
    assert inputs.latents.shape == (24, 4, 4, 4)
    again = Attributor(m, d, TINY, cache_dir=cache).inputs()      # read back memory-mapped, not encoded again
    assert isinstance(again.latents, np.memmap) and np.array_equal(np.asarray(again.latents), inputs.latents)
    # the latents are the VAE posterior means (× scaling factor) of the pixels
    with torch.no_grad():
        mean = m.vae.encode(d.tensor([3])).latent_dist.mean * m.vae.config.scaling_factor
    assert torch.allclose(torch.from_numpy(np.asarray(inputs.latents[3])), mean[0], atol=1e-5)
    # each item is conditioned on its own caption: the same embedding as encoding it now
    emb = m.encode_prompts([d.captions[7]])["encoder_hidden_states"]
    assert torch.allclose(inputs.cond([7])["encoder_hidden_states"], emb, atol=1e-6)
    # another prompt is another query
    r2 = a.attribute(q, prompt="a light square")
    assert not np.allclose(r2.scores, r.scores)


def test_text_model_cli_generate_attribute_and_reopen(sd_dir, data_npz, tmp_path, capsys):
    from mucs.__main__ import main
    from mucs.explorer.history import RunStore
    from mucs.sources.generate import generated_info
    png = str(tmp_path / "q.png")
    assert main(["generate", "--model", sd_dir, "--prompt", "a dark ring", "--seed", "3", "--steps", "4",
                 "--guidance-scale", "2", "--out", png]) == 0
    assert generated_info(png)["prompt"] == "a dark ring" and generated_info(png)["guidance_scale"] == 2
    assert main(["generate", "--model", sd_dir, "--label", "1", "--seed", "3", "--out", str(tmp_path / "x.png")]) == 2
    assert "give a prompt, not a class label" in capsys.readouterr().err
    runs = str(tmp_path / "runs")
    args = ["attribute", "--model", sd_dir, "--data", data_npz, "--image", png, "--runs", runs,
            "--cache-dir", str(tmp_path / "c"), "--settings", json.dumps(TINY.to_dict())]
    assert main(args) == 0            # the PNG's own prompt: no --prompt needed
    store = RunStore(runs, examples=None)
    (rid,) = store.ids()
    att = store.load(rid)
    assert att.query["prompt"] == "a dark ring" and att.captions[0] == "a dark ring"
    with open(os.path.join(store.path(rid), "scores.csv")) as f:
        header = f.readline().strip().split(",")
    assert header[-1] == "caption"
    report = str(tmp_path / "r.html")
    assert main(["report", store.path(rid), "--data", data_npz, "--out", report]) == 0
    html = open(report).read()      # the query's prompt, the model's family and every top-k item's caption
    assert "prompt <b>“a dark ring”</b>" in html and "UNet2DConditionModel · unet2d_condition · text" in html
    assert html.count("<div class='sub'>“a ") == len(att.top)
    assert main(args[:-2] + ["--prompt", "a dark ring", "a light ring"]) == 2
    assert "one --prompt for every --image" in capsys.readouterr().err
    assert main(["attribute", "--model", sd_dir, "--data", data_npz, "--list-classes"]) == 0
    out = capsys.readouterr().out
    assert "text-conditional" in out and "a dark ring" in out and "4 distinct" in out


def test_text_model_in_the_explorer(sd_dir, data_npz, tmp_path):
    from mucs.explorer.state import Explorer
    ex = Explorer(sd_dir, data_npz, overrides=TINY.to_dict(), runs_dir=str(tmp_path / "runs"), examples_dir=None)
    assert ex.text and "text-conditional" in ex.describe() and ex.class_choices() == []
    with pytest.raises(MucsError, match="a prompt is required"):
        ex.generate(None, 0, 1, 4, prompt="")
    (q,) = ex.generate(None, 0, 1, 4, prompt="a light square", guidance_scale=3)
    assert q.prompt == "a light square" and q.meta["guidance_scale"] == 3
    t = ex.training_item(2)
    assert t.prompt == "a dark square"
    up = ex.upload(_png_of(tmp_path, t.image))
    with pytest.raises(MucsError, match="type the query's prompt"):
        ex.with_label(up, None)
    run_id, att = ex.attribute(ex.with_label(up, None, "a dark square"))
    assert att.query["prompt"] == "a dark square"
    assert ex.top_gallery(att)[0][1].count("“") == 1          # captions under the images
    assert "prompt “a dark square”" in ex.summary(att, run_id)
    assert ex.store.load(run_id).captions == list(ex.data.captions)


def _png_of(tmp_path, img):
    from PIL import Image
    p = tmp_path / "up.png"
    Image.fromarray(img[..., 0]).save(p)
    return str(p)


# --- transformers -----------------------------------------------------------------------------------
def test_dit_at_the_top_of_a_folder_is_a_dit_not_a_random_unet(tmp_path, tiny_npz):
    """The reported case: a DiTTransformer2DModel saved at the root with a DDPMScheduler once loaded as a
    randomly initialised UNet2DModel. It loads as the DiT it is, splits its learned-sigma output, and
    attributes; its weights in a UNet2DModel config are refused."""
    from mucs.method.attribute import Attributor
    from mucs.sources.finetune import fit
    from mucs.sources.models import DiffusionModel, load_model
    d = load_dataset(tiny_npz)
    m = DiffusionModel(unet=tiny.dit(size=8, channels=1, num_classes=4), scheduler=_scheduler())
    fit(m, d, 150, batch_size=16, lr=3e-3, cond_dropout=0.1)
    root = tmp_path / "dit"
    m.unet.save_pretrained(root, safe_serialization=True)
    m.scheduler.save_pretrained(root)
    got = load_model(str(root))
    assert type(got.unet).__name__ == "DiTTransformer2DModel" and got.family.learned_sigma
    assert (got.num_classes, got.null_class, got.conditioning) == (4, 4, "class")
    pred = got.predict(got.unet, torch.zeros(2, 1, 8, 8), torch.tensor([3, 4]), got.label_cond([0, 1]))
    assert pred.shape == (2, 1, 8, 8)                  # the variance half is dropped
    r = Attributor(got, d, TINY, cache_dir=str(tmp_path / "c")).attribute(QueryImage(d.tensor([2])[0], []), 2)
    assert np.isfinite(r.scores).all() and r.info["model_family"] == "dit"
    # transformer/ + scheduler/ subfolders load the same network
    sub = tmp_path / "sub"
    m.unet.save_pretrained(sub / "transformer", safe_serialization=True)
    m.scheduler.save_pretrained(sub / "scheduler")
    assert load_model(str(sub)).fingerprint() == got.fingerprint()
    # a config that names another class than the weights hold: refused, never half random
    cfg = json.loads((root / "config.json").read_text())
    cfg.update(_class_name="UNet2DModel")
    (root / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MucsError, match="do not fit UNet2DModel"):
        load_model(str(root))
    # generation with guidance through DiT's null class
    from mucs.sources.generate import generate
    assert generate(got, [1, 2], [0, 1], steps=3, guidance_scale=2.0).shape == (2, 8, 8, 1)


def test_pixart_with_t5_captions_attributes(tmp_path):
    from mucs.method.attribute import Attributor
    from mucs.sources.finetune import fit, save_pipeline
    from mucs.sources.models import DiffusionModel, load_model
    d = captioned(n=16)
    tok = tiny.write_word_tokenizer(str(tmp_path / "tok"), tiny.words_of(d.captions), 8)
    m = DiffusionModel(unet=tiny.pixart(size=4, channels=4, caption_channels=32), scheduler=_scheduler(),
                       vae=tiny.vae(1, 4, (16, 32)), text_encoder=tiny.t5_text_encoder(len(tok), 32), tokenizer=tok,
                       train_config=dict(max_sequence_length=8))
    fit(m, d, 100, batch_size=16, lr=3e-3, cond_dropout=0.1)
    save_pipeline(m, str(tmp_path / "pixart"), dict(lr=3e-3, max_sequence_length=8))
    got = load_model(str(tmp_path / "pixart"))
    assert (got.family.name, got.conditioning, got.latent) == ("pixart", "text", True)
    c = got.encode_prompts(["a dark ring"])
    assert set(c) == {"encoder_hidden_states", "encoder_attention_mask"} and int(c["encoder_attention_mask"].sum()) == 3
    r = Attributor(got, d, TINY, cache_dir=str(tmp_path / "c"), allow_untrained=True).attribute(
        QueryImage(d.tensor([1])[0], []), prompt=d.captions[1])
    assert np.isfinite(r.scores).all() and r.info["model_family"] == "pixart"


# --- LoRA -------------------------------------------------------------------------------------------
def test_lora_adapter_unlearns_only_the_adapter_by_default(sd_dir, data_npz, tmp_path):
    from peft import LoraConfig
    from mucs.method.unlearn import unlearn
    from mucs.sources.finetune import fit, save_lora
    from mucs.sources.models import load_model
    d = load_dataset(data_npz)
    base = load_model(sd_dir)
    base.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    fit(base, d, 30, batch_size=16, lr=1e-2, trainable={n for n, _ in base.unet.named_parameters() if "lora_" in n})
    save_lora(base, str(tmp_path / "lora"), dict(lr=1e-2))
    m = load_model(sd_dir, lora=str(tmp_path / "lora"))
    assert m.lora["parameters"] > 0 and m.learning_rate == pytest.approx(1e-2)
    plain = load_model(sd_dir)
    assert m.fingerprint() != plain.fingerprint()
    x0 = m.encode_images(d.tensor([0]))[0]
    before = {n: p.clone() for n, p in m.unet.named_parameters()}
    s = TINY.replace(max_steps=2, tol=0.0)
    u = unlearn(m, d, x0, m.condition(prompt=d.captions[0]), 10.0, s)
    changed = {n for n, p in u.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    u_all = unlearn(m, d, x0, m.condition(prompt=d.captions[0]), 10.0, s.replace(unlearn_params="all"))
    assert any("lora_" not in n and not torch.equal(p, before[n]) for n, p in u_all.unet.named_parameters())
    with pytest.raises(MucsError, match="not an adapter of this model|does not fit"):
        bad = tmp_path / "bad.safetensors"
        from safetensors.torch import save_file
        save_file({"unet.nowhere.lora_A.weight": torch.zeros(4, 4), "unet.nowhere.lora_B.weight": torch.zeros(4, 4)},
                  str(bad))
        load_model(sd_dir, lora=str(bad))


# --- refusals: each family MUCS cannot attribute, in one line ---------------------------------------
def _save_unet_with(tmp_path, scheduler_cls, **sched_kw):
    from diffusers import UNet2DModel
    import diffusers
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=8,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                layers_per_block=1).save_pretrained(tmp_path / "m" / "unet", safe_serialization=True)
    getattr(diffusers, scheduler_cls)(**sched_kw).save_pretrained(tmp_path / "m" / "scheduler")
    return str(tmp_path / "m")


@pytest.mark.parametrize("scheduler,match", [("EDMEulerScheduler", "sigma-based"),
                                             ("FlowMatchEulerDiscreteScheduler", "flow-matching models")])
def test_refused_schedulers(tmp_path, scheduler, match):
    from mucs.__main__ import main
    from mucs.sources.models import load_model
    path = _save_unet_with(tmp_path, scheduler)
    with pytest.raises(MucsError, match=match):
        load_model(path)
    assert main(["generate", "--model", path, "--seed", "0", "--out", str(tmp_path / "g.png")]) == 2
    assert not os.path.exists(tmp_path / "g.png")


def test_refused_denoisers(tmp_path):
    from mucs.sources.models import load_model
    cases = {"SD3Transformer2DModel": "flow-matching models", "FluxTransformer2DModel": "flow-matching models",
             "UNet3DConditionModel": "unsupported denoiser class 'UNet3DConditionModel'"}
    for cls, match in cases.items():
        folder = tmp_path / cls
        (folder / "transformer").mkdir(parents=True)
        (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": cls}))
        (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        _save_sched(folder)
        with pytest.raises(MucsError, match=match):
            load_model(str(folder))
    # an SDXL-style UNet (two text encoders, pooled and size conditioning)
    from diffusers import UNet2DConditionModel
    sdxl = tmp_path / "sdxl"
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                         norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), addition_embed_type="text_time",
                         addition_time_embed_dim=8, projection_class_embeddings_input_dim=80
                         ).save_pretrained(sdxl / "unet", safe_serialization=True)
    _save_sched(sdxl)
    for sub in ("text_encoder", "tokenizer"):
        (sdxl / sub).mkdir()
        (sdxl / sub / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"]}))
    with pytest.raises(MucsError, match="SDXL-style"):
        load_model(str(sdxl))
    # a pipeline index naming a flow-matching pipeline
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "X"]}))
    with pytest.raises(MucsError, match="flow-matching"):
        load_model(str(sdxl))


def _save_sched(folder):
    _scheduler().save_pretrained(folder / "scheduler")


def test_missing_weights_and_untrained_networks_are_refused(tmp_path, tiny_model_dir, tiny_npz):
    from mucs.method.attribute import Attributor
    from mucs.sources.models import load_model
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, bad)
    w = bad / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(w))
    save_file({k: v for k, v in state.items() if not k.startswith("conv_out")}, str(w))
    with pytest.raises(MucsError, match="missing keys .*refusing a partly random network"):
        load_model(str(bad))
    # a random (untrained) UNet2DModel of the same architecture: loads, but is refused before scoring
    from diffusers import UNet2DModel
    rnd = tmp_path / "random"
    shutil.copytree(tiny_model_dir, rnd)
    cfg = json.loads((rnd / "unet" / "config.json").read_text())
    torch.manual_seed(7)
    UNet2DModel.from_config(cfg).save_pretrained(rnd / "unet", safe_serialization=True)
    m, d = load_model(str(rnd)), load_dataset(tiny_npz)
    q = QueryImage(d.tensor([0])[0], [])
    with pytest.raises(MucsError, match=r"does not look trained on this data: .* L_null = .*--allow-untrained"):
        Attributor(m, d, TINY, cache_dir=str(tmp_path / "c")).attribute(q, 0)
    r = Attributor(m, d, TINY, cache_dir=str(tmp_path / "c"), allow_untrained=True).attribute(q, 0)
    assert r.info["trained_loss"] > 0.8 * r.loss_null
    # the trained model passes the same check with room to spare
    good = Attributor(load_model(tiny_model_dir), d, TINY, cache_dir=str(tmp_path / "c2")).attribute(q, 0)
    assert good.info["trained_loss"] < 0.5 * good.loss_null


# --- captions from every data source ----------------------------------------------------------------
def test_captions_from_every_source(tmp_path):
    from PIL import Image
    d = captioned(n=6)
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = []
    for i, im in enumerate(d.images):
        Image.fromarray(im[..., 0]).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": d.captions[i]})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_dataset(str(folder)).captions == d.captions
    os.remove(folder / "metadata.jsonl")
    (folder / "metadata.csv").write_text("file_name,caption\n" + "\n".join(f"{i}.png,{c}" for i, c in enumerate(d.captions)))
    assert load_dataset(str(folder)).captions == d.captions
    (folder / "metadata.csv").write_text("file_name,caption\n0.png,x\n")
    with pytest.raises(MucsError, match="have no caption in the metadata"):
        load_dataset(str(folder))
    os.remove(folder / "metadata.csv")
    assert load_dataset(str(folder)).captions is None
    import datasets
    hf = datasets.Dataset.from_dict({"image": [Image.fromarray(im[..., 0]) for im in d.images], "prompt": d.captions})
    hf.save_to_disk(str(tmp_path / "hf"))
    got = load_dataset(str(tmp_path / "hf"))
    assert got.captions == d.captions
    with pytest.raises(MucsError, match="no column 'text'"):
        load_dataset(str(tmp_path / "hf"), caption_column="text")
    np.savez(tmp_path / "bad.npz", images=d.images[..., 0], captions=np.array(d.captions[:3]))
    with pytest.raises(MucsError, match=r"captions must be \(6,\) strings"):
        load_dataset(str(tmp_path / "bad.npz"))
    # captions enter the fingerprint (another caption, another L_o), caption-less sets keep theirs
    a = TrainingSet(images=d.images, captions=d.captions)
    b = TrainingSet(images=d.images, captions=d.captions[::-1])
    assert a.fingerprint() != b.fingerprint() != TrainingSet(images=d.images).fingerprint()


def test_micro_batched_unlearning_of_a_text_latent_model_takes_the_same_steps(sd_dir, data_npz, monkeypatch):
    """unlearn_chunk works for a text-conditional latent model: chunks carry each item's caption
    embedding and the query's prompt, and give the whole batch's curve and weights (plain SGD, as in
    test_method's pixel version: AdamW turns float noise in near-zero gradients into full steps)."""
    from mucs.method.unlearn import unlearn
    from mucs.sources.models import load_model
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr * 100))
    m, d = load_model(sd_dir), load_dataset(data_npz)
    x = m.encode_images(d.tensor([2]))[0]
    cond = m.encode_prompts([d.captions[2]])
    s = TINY.replace(max_steps=3, tol=0.0, batch_size=8)
    whole = unlearn(m, d, x, cond, loss_null=5.0, s=s)
    parts = unlearn(m, d, x, cond, loss_null=5.0, s=s.replace(unlearn_chunk=3))
    assert whole.steps == 3
    assert_same_unlearning(whole, parts, m)


def test_time_estimate_before_a_run(sd_dir, data_npz, tmp_path):
    """The estimate said before a run scales with what the settings ask for and drops what is cached
    (no timing is asserted: only how the stages follow the settings)."""
    from mucs.method.attribute import Attributor
    from mucs.sources.models import load_model
    a = Attributor(load_model(sd_dir), load_dataset(data_npz), TINY, cache_dir=str(tmp_path / "c"))
    e = a.estimate(TINY)
    assert set(e.stages) == {"original_losses", "null_loss", "unlearning", "unlearned_losses"}
    assert e.cached == dict(original_losses=False, null_loss=False) and e.stages["original_losses"][0] > 0
    lo, hi = e.stages["unlearning"]
    lo2, hi2 = a.estimate(TINY.replace(max_steps=2 * TINY.max_steps)).stages["unlearning"]
    assert 0 < lo < hi and lo2 == pytest.approx(2 * lo) and hi2 == pytest.approx(2 * hi)
    assert a.estimate(TINY.replace(noises=2 * TINY.noises)).stages["original_losses"][0] == pytest.approx(
        2 * e.stages["original_losses"][0])
    a.prepare(TINY)
    e = a.estimate(TINY)
    assert e.stages["original_losses"] == e.stages["null_loss"] == (0.0, 0.0)
    assert "cached already: original losses, null loss — an estimate from a short probe" in e.text()
