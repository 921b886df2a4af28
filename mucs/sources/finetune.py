"""Training (or fine-tuning) the denoiser of any supported family on its training set — its latents and
captions included — and saving the result as a diffusers pipeline folder. `mucs train` keeps its
own recipe for pixel UNet2DModels (EMA, warm-up); this is the one for every other family: the shipped
text-conditional example model, LoRA adapters and the tests' tiny models are trained with it."""
import json
import os
from typing import Optional

import numpy as np
import torch

from .families import cond_to
from .inputs import model_inputs
from .models import TRAIN_CONFIG, alphas_cumprod, per_item_loss, training_noise

PIPELINES = {"unet2d_condition": "StableDiffusionPipeline", "pixart": "PixArtAlphaPipeline", "dit": "DiTPipeline",
             "unet2d": "DDPMPipeline"}


def fit(model, data, steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, trainable=None,
        cond_dropout: float = 0.0, ema_decay: float = 0.0, progress=None, cancel=None) -> list:
    """Train `model.unet` in place on `data` with the DDPM recipe (t uniform, ε ~ N(0, I), the model's
    own objective), AdamW at `lr`, gradients clipped at 1. `trainable` (parameter names) limits what is
    trained (a LoRA adapter); `cond_dropout` replaces that share of conditions by the unconditional one
    (the empty caption, DiT's null class) so that classifier-free guidance works; `ema_decay` > 0 keeps
    an exponential moving average that replaces the weights at the end. `progress` gets ProgressEvents.
    Returns the loss per step."""
    from ..progress import Reporter
    report = Reporter(progress, cancel)
    inputs = model_inputs(model, data)
    net, dev = model.unet, model.device
    names = {n for n, _ in net.named_parameters()} if trainable is None else set(trainable)
    params = [p for n, p in net.named_parameters() if n in names]
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema = None
    if ema_decay:
        from diffusers.training_utils import EMAModel
        ema = EMAModel(params, decay=ema_decay)
    ac = alphas_cumprod(model).to(dev)
    T = len(ac)
    uncond = _unconditional(model)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(inputs), (batch_size,), generator=g).numpy()
        x0, cond = inputs.x0(idx).to(dev), inputs.cond(idx)
        if cond_dropout and uncond is not None:
            drop = torch.rand(batch_size, generator=g) < cond_dropout
            cond = {k: torch.where(drop.view(-1, *[1] * (v.dim() - 1)), uncond[k].expand_as(v), v)
                    for k, v in (cond or {}).items()}
        t, eps = training_noise(batch_size, model.x0_shape, T, g, dev)
        loss = per_item_loss(model.predictor(net), ac, model.prediction_type, x0, cond_to(cond, dev), t, eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            ema.step(params)
        losses.append(float(loss.detach()))
        report("training", (step + 1) / steps, loss=losses[-1])
    if ema is not None:
        ema.copy_to(params)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    model._fingerprint = None
    return losses


def fit_vae(vae, images: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 1e-3, kl_weight: float = 1e-6,
            seed: int = 0, progress=None) -> list:
    """Train an AutoencoderKL in place on `images` ((N, C, H, W) in [-1, 1]) as latent diffusion's first
    stage: reconstruction error of a posterior sample plus a small KL term. Then set its
    scaling_factor so that the latent means have unit standard deviation (as SD's 0.18215 was chosen).
    Returns the loss per step."""
    from ..progress import Reporter
    report = Reporter(progress)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    losses = []
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch_size,), generator=g)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = torch.nn.functional.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        report("training the VAE", (step + 1) / steps, loss=losses[-1])
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    for p in vae.parameters():
        p.requires_grad_(False)
    return losses


def _unconditional(model) -> Optional[dict]:
    """The condition of classifier-free guidance's unconditional branch, on the CPU."""
    if model.conditioning == "text":
        return model.encode_prompts([""])
    if model.null_class is not None:
        return model.label_cond([model.null_class])
    return None


def save_pipeline(model, folder: str, record: Optional[dict] = None) -> None:
    """Save `model` as a diffusers pipeline folder (model_index.json naming each component, each in
    its subfolder, safetensors) with `record` as mucs_train.json. Writes into a new or empty folder."""
    if os.path.exists(folder) and os.listdir(folder):
        raise FileExistsError(f"{folder} is not empty")
    os.makedirs(folder, exist_ok=True)
    import diffusers
    den = "unet" if model.family.name.startswith("unet") else "transformer"
    index: dict = {"_class_name": PIPELINES[model.family.name], "_diffusers_version": diffusers.__version__,
             den: ["diffusers", type(model.unet).__name__], "scheduler": ["diffusers", type(model.scheduler).__name__]}
    model.unet.save_pretrained(os.path.join(folder, den), safe_serialization=True)
    model.scheduler.save_pretrained(os.path.join(folder, "scheduler"))
    for role, part in (("vae", model.vae), ("text_encoder", model.text_encoder), ("tokenizer", model.tokenizer)):
        if part is None:
            continue
        lib = "diffusers" if role == "vae" else "transformers"
        index[role] = [lib, type(part).__name__]
        kw = {"safe_serialization": True} if role != "tokenizer" else {}
        part.save_pretrained(os.path.join(folder, role), **kw)
    if model.family.name == "unet2d_condition":   # StableDiffusionPipeline.from_pretrained opens the folder too
        index.update({"safety_checker": [None, None], "feature_extractor": [None, None],
                      "requires_safety_checker": False})
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)
    if record is not None:
        with open(os.path.join(folder, TRAIN_CONFIG), "w") as f:
            json.dump(record, f, indent=1, allow_nan=False, default=_plain)


def save_lora(model, folder: str, record: Optional[dict] = None) -> None:
    """Save the LoRA adapter of `model.unet` (peft) as diffusers' pytorch_lora_weights.safetensors."""
    from peft.utils import get_peft_model_state_dict
    from diffusers import StableDiffusionPipeline
    os.makedirs(folder, exist_ok=True)
    layers = get_peft_model_state_dict(model.unet)
    if model.family.name == "unet2d_condition":
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    else:
        from safetensors.torch import save_file
        save_file({f"transformer.{k}": v.contiguous() for k, v in layers.items()},
                  os.path.join(folder, "pytorch_lora_weights.safetensors"))
    if record is not None:
        with open(os.path.join(folder, TRAIN_CONFIG), "w") as f:
            json.dump(record, f, indent=1, allow_nan=False, default=_plain)


def _plain(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(type(o).__name__)
