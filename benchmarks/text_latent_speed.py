"""Stage times (and peak memory) of one attribution with a text-conditional latent model.

Two cases:
- default: the shipped example model (assets/fashion16-text, 1,000 captioned Fashion-MNIST images) on
  this machine, with its recommended settings; prints each stage's seconds;
- --sd15: a Stable-Diffusion-1.5-sized pipeline with random weights (UNet2DConditionModel with SD 1.5's
  configuration, its VAE and a CLIP ViT-L/14-sized text encoder; 512×512 images → 64×64×4 latents),
  N random captioned images (default 1,000), attributed with --allow-untrained: what a GPU needs for one
  query of a model of that size (stage times, peak GPU memory). Meant for benchmarks/gpu_check.sh.

Usage: python benchmarks/text_latent_speed.py [--sd15 [--items 1000]] [--noises K] [--max-steps N] [--out FILE.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs.method.attribute import Attributor  # noqa: E402
from mucs.settings import Settings  # noqa: E402
from mucs.sources.data import QueryImage, TrainingSet, load_dataset, to_model_range  # noqa: E402
from mucs.sources.models import DiffusionModel, load_model, pick_device  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = ["a", "photo", "painting", "of", "red", "blue", "green", "small", "large", "cat", "dog", "house", "tree",
         "car", "boat", "in", "the", "snow", "rain", "sun", "night", "city", "forest"]


def sd15(items: int, device, seed: int = 0):
    """An SD-1.5-sized pipeline with random weights and `items` random 512×512 captioned images."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from mucs.sources.tiny import write_clip_tokenizer
    import tempfile
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=512, scaling_factor=0.18215)
    tok = write_clip_tokenizer(tempfile.mkdtemp(prefix="sd15-tok-"), WORDS, max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          skip_prk_steps=True, steps_offset=1)
    model = DiffusionModel(unet=unet.to(device).eval(), scheduler=sched, vae=vae.to(device).eval(),
                           text_encoder=text.to(device).eval(), tokenizer=tok, path="")
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (items, 512, 512, 3), dtype=np.uint8)
    caps = [" ".join(rng.choice(WORDS[4:], 4)) for _ in range(items)]
    return model, TrainingSet(images=images, captions=caps, source=f"random-{items}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd15", action="store_true", help="an SD-1.5-sized pipeline with random weights")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--noises", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--eval-batch-size", type=int, default=None)
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = pick_device(a.device)
    t0 = time.perf_counter()
    if a.sd15:
        model, data = sd15(a.items, dev)
        s = Settings(noises=16, max_steps=20)      # the paper's B and λ; K and the cap kept short for one GPU run
    else:
        from mucs.defaults import settings_for
        path = os.path.join(os.path.dirname(HERE), "assets", "fashion16-text")
        model = load_model(path, a.device)
        data = load_dataset(os.path.join(os.path.dirname(HERE), "assets", "fashion_mnist_16px_1k_captions.npz"))
        s = settings_for(path)
    s = s.replace(noises=a.noises, max_steps=a.max_steps, batch_size=a.batch_size, eval_batch_size=a.eval_batch_size,
                  precision=a.precision)
    load_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    import tempfile
    att = Attributor(model, data, s, cache_dir=tempfile.mkdtemp(prefix="mucs-bench-"), allow_untrained=a.sd15)
    t0 = time.perf_counter()
    inputs = att.inputs()
    encode_s = time.perf_counter() - t0
    est = att.estimate(s)
    q = QueryImage(to_model_range(data.images[0]), [])
    res = att.attribute(q, prompt=data.captions[0], settings=s)
    rec = dict(case="sd15-random" if a.sd15 else "fashion16-text", device=str(dev), items=len(data),
               x0_shape=list(model.x0_shape), parameters=sum(p.numel() for p in model.unet.parameters()),
               settings=dict(noises=s.noises, batch_size=s.batch_size, max_steps=s.max_steps, precision=s.precision),
               load_seconds=round(load_s, 1), encode_training_set_seconds=round(encode_s, 1),
               stage_seconds={k: round(v, 1) for k, v in res.stage_times.items()}, unlearning_steps=res.steps,
               converged=res.converged, estimate=est.text(), self_rank=int(np.where(res.top == 0)[0][0]) + 1
               if 0 in res.top else None, latents_bytes=int(np.asarray(inputs.latents).nbytes))
    if dev.type == "cuda":
        rec["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        rec["gpu"] = torch.cuda.get_device_name(dev)
    else:
        import resource
        rec["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        rec["threads"] = torch.get_num_threads()
    print(json.dumps(rec, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
