"""Train a (class-conditional) diffusers UNet2DModel + DDPMScheduler with EMA on a training set,
and save it in diffusers layout with the training options (the lr among them: unlearning uses it)."""
import copy
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from .cache import move_dir_into_place
from .data import TrainingSet
from .models import TRAIN_CONFIG, per_item_loss, training_noise
from .progress import Reporter


@dataclass
class TrainOptions:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    seed: int = 0
    ema_decay: float = 0.999
    channels: tuple = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = True          # self-attention in the lowest-resolution block
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    log_every: int = 50
    save_every: int = 0             # >0: also save the EMA weights every this many steps (resumable runs can stop early)


def build_unet(opts: TrainOptions, size: int, channels: int, num_classes: Optional[int]):
    """A UNet2DModel sized by `opts`; class-conditional (learned class embedding) when labelled."""
    from diffusers import UNet2DModel
    n = len(opts.channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if opts.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                       block_out_channels=tuple(opts.channels), layers_per_block=opts.layers_per_block,
                       down_block_types=tuple(down), up_block_types=tuple(up),
                       num_class_embeds=num_classes, norm_num_groups=min(32, min(opts.channels)))


def train(data: TrainingSet, out_dir: str, opts: TrainOptions, device: str = "cpu", progress=None, cancel=None,
          exclude: Optional[np.ndarray] = None) -> dict:
    """Train from scratch, deterministically for a given seed and `exclude` set (indices left out),
    and save EMA weights to `out_dir` (written atomically). Returns the training record."""
    from diffusers import DDPMScheduler
    report = Reporter(progress, cancel)
    keep = np.arange(len(data)) if exclude is None else np.setdiff1d(np.arange(len(data)), np.asarray(exclude))
    torch.manual_seed(opts.seed)
    g = torch.Generator().manual_seed(opts.seed)
    num_classes = data.num_classes
    unet = build_unet(opts, data.size, data.channels, num_classes).to(device).train()
    ema = copy.deepcopy(unet).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    sched = DDPMScheduler(num_train_timesteps=opts.num_train_timesteps, beta_schedule=opts.beta_schedule,
                          prediction_type=opts.prediction_type)
    ac = sched.alphas_cumprod.to(torch.float32).to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, opts.warmup_steps)))
    shape = (data.channels, data.size, data.size)
    images = data.tensor(keep)
    labels = data.label_tensor(keep)
    losses, window, t_start = [], [], time.perf_counter()
    for step in range(opts.steps):
        idx = torch.randint(0, len(keep), (opts.batch_size,), generator=g)
        t, eps = training_noise(opts.batch_size, shape, opts.num_train_timesteps, g, device)
        x0 = images[idx].to(device)
        # horizontal flips would change which training image a query matches: no augmentation
        y = labels[idx].to(device) if labels is not None else None
        loss = per_item_loss(unet, ac, opts.prediction_type, x0, y, t, eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        warm.step()
        with torch.no_grad():
            d = min(opts.ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        window.append(float(loss.detach()))
        if (step + 1) % opts.log_every == 0 or step + 1 == opts.steps:
            losses.append(dict(step=step + 1, loss=float(np.mean(window))))
            window = []
            report("training", (step + 1) / opts.steps, step=step + 1, loss=losses[-1]["loss"])
        if opts.save_every and (step + 1) % opts.save_every == 0 and step + 1 < opts.steps:
            save_model(ema, sched, _record(opts, data, keep, losses, t_start, unet, device, step + 1), out_dir)
    record = _record(opts, data, keep, losses, t_start, unet, device, opts.steps)
    save_model(ema.cpu(), sched, record, out_dir)
    return record


def _record(opts, data, keep, losses, t_start, unet, device, steps_done) -> dict:
    return dict(asdict(opts), channels=list(opts.channels), steps_done=steps_done, num_train=int(len(keep)),
                num_classes=data.num_classes, class_names=data.class_names, data=data.source,
                data_fingerprint=data.fingerprint(), excluded=int(len(data) - len(keep)),
                train_seconds=time.perf_counter() - t_start, final_loss=losses[-1]["loss"] if losses else None,
                loss_curve=losses, parameters=int(sum(p.numel() for p in unet.parameters())), device=str(device))


def save_model(unet, scheduler, record: dict, out_dir: str) -> None:
    """Save unet/ (safetensors) + scheduler/ + model_index.json (a DDPMPipeline folder that
    `DDPMPipeline.from_pretrained` opens) + mucs_train.json; the folder appears whole or not at all."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-model-")
    os.chmod(tmp, 0o755)
    try:
        unet.save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True)
        scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
        write_pipeline_index(tmp, scheduler)
        with open(os.path.join(tmp, TRAIN_CONFIG), "w") as f:
            json.dump(record, f, indent=1)
        move_dir_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_pipeline_index(folder: str, scheduler) -> None:
    """model_index.json of a DDPMPipeline whose unet/ and scheduler/ are in `folder`."""
    import diffusers
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
             "scheduler": ["diffusers", type(scheduler).__name__], "unet": ["diffusers", "UNet2DModel"]}
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
