"""Build the shipped text-conditional latent example model on the embedded Fashion-MNIST subset.

1. Captions: each of the 1,000 images gets "a <size> <tone> <class>" from its own pixels (size: object
   area against its class's median; tone: mean object intensity, in terciles over the set), 60 distinct
   captions; written with the images to assets/fashion_mnist_16px_1k_captions.npz.
2. A CLIP tokenizer over the caption words and a small CLIP text encoder, randomly initialised and
   frozen (no pretrained text encoder can be downloaded here: a fixed random encoder still gives each
   caption its own embedding sequence, which the denoiser learns to read through cross-attention).
3. A small AutoencoderKL (16×16×1 pixels -> 8×8×4 latents) trained on the images.
4. A UNet2DConditionModel (SD's layout: cross-attention on the caption embeddings) trained on the
   latents with 10 % caption dropout (for classifier-free guidance) and EMA.
5. Saved as a StableDiffusionPipeline folder (assets/fashion16-text/) with mucs_train.json, then
   finished by `python assets/finish_default.py --model assets/fashion16-text --data <captions npz>`.

Usage: python assets/make_text_model.py [--steps 5000] [--vae-steps 1500] [--out assets/fashion16-text]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs.progress import TextBar  # noqa: E402
from mucs.sources import tiny  # noqa: E402
from mucs.sources.data import TrainingSet, load_dataset  # noqa: E402
from mucs.sources.finetune import fit, fit_vae, save_pipeline  # noqa: E402
from mucs.sources.models import DiffusionModel  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CLASS_WORDS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def captions_for(images: np.ndarray, labels: np.ndarray) -> list:
    """'a <small|large> <dark|grey|light> <class>' for each image, from its own pixels."""
    x = images[..., 0].astype(np.float64) if images.ndim == 4 else images.astype(np.float64)
    obj = x > 20
    area = obj.sum((1, 2))
    tone = np.array([x[i][obj[i]].mean() if obj[i].any() else 0.0 for i in range(len(x))])
    lo, hi = np.quantile(tone, [1 / 3, 2 / 3])
    out = []
    for i, y in enumerate(labels):
        med = np.median(area[labels == y])
        size = "large" if area[i] > med else "small"
        t = "dark" if tone[i] <= lo else "light" if tone[i] > hi else "grey"
        out.append(f"a {size} {t} {CLASS_WORDS[int(y)]}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "fashion_mnist_16px_1k.npz"))
    ap.add_argument("--captions-out", default=os.path.join(HERE, "fashion_mnist_16px_1k_captions.npz"))
    ap.add_argument("--out", default=os.path.join(HERE, "fashion16-text"))
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    src = load_dataset(a.data)
    caps = captions_for(src.images, src.labels)
    np.savez_compressed(a.captions_out, images=src.images[..., 0], labels=src.labels,
                        class_names=np.array(src.class_names), captions=np.array(caps),
                        **{k: v for k, v in np.load(a.data).items() if k not in ("images", "labels", "class_names")})
    data = TrainingSet(images=src.images, labels=src.labels, class_names=src.class_names, captions=caps)
    print(f"{len(set(caps))} distinct captions, e.g. {caps[:3]}")
    t0 = time.time()
    tok = tiny.write_clip_tokenizer(a.out + ".tok", tiny.words_of(caps), max_length=16)
    text_encoder = tiny.clip_text_encoder(len(tok), hidden=32, layers=2, max_length=16, seed=a.seed)
    vae = tiny.vae(channels=1, latent_channels=4, blocks=(32, 64), seed=a.seed)
    bar = TextBar()
    vae_losses = fit_vae(vae, data.tensor(), a.vae_steps, batch_size=32, lr=2e-3, seed=a.seed, progress=bar)
    bar.close()
    print(f"VAE: loss {np.mean(vae_losses[-50:]):.4f} after {a.vae_steps} steps, scaling_factor "
          f"{vae.config.scaling_factor:.4f} ({time.time() - t0:.0f} s)")
    from diffusers import DDPMScheduler, UNet2DConditionModel
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=16, cross_attention_dim=32,
                                attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    model = DiffusionModel(unet=unet, scheduler=sched, vae=vae, text_encoder=text_encoder, tokenizer=tok)
    bar = TextBar()
    t1 = time.time()
    losses = fit(model, data, a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, cond_dropout=0.1,
                 ema_decay=0.999, progress=bar)
    bar.close()
    params = sum(p.numel() for p in unet.parameters())
    record = dict(kind="text-conditional latent diffusion (StableDiffusionPipeline layout)", lr=a.lr, steps=a.steps,
                  batch_size=a.batch_size, seed=a.seed, ema_decay=0.999, caption_dropout=0.1, vae_steps=a.vae_steps,
                  vae_loss=float(np.mean(vae_losses[-50:])), parameters=params,
                  final_loss=float(np.mean(losses[-100:])), loss_curve=[float(np.mean(losses[i:i + 100]))
                                                                         for i in range(0, len(losses), 100)],
                  train_seconds=round(time.time() - t1), guidance_scale=3.0, num_train=len(data),
                  captions="a <small|large> <dark|grey|light> <class> (assets/make_text_model.py)",
                  text_encoder="CLIPTextModel, random and frozen (no pretrained encoder offline)")
    import shutil
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    save_pipeline(model, a.out, record)
    shutil.rmtree(a.out + ".tok")
    print(json.dumps({k: v for k, v in record.items() if k != "loss_curve"}, indent=1))


if __name__ == "__main__":
    main()
