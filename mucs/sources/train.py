"""Train a (class-conditional) diffusers UNet2DModel + DDPMScheduler with EMA on a training set,
and save it in diffusers layout with the training options (the lr among them: unlearning uses it)."""
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..cache import check_out_dir, move_dir_into_place, staging_dir
from .data import TrainingSet
from ..defaults import shown_path
from ..errors import MucsError
from .families import family_of
from .models import TRAIN_CONFIG, per_item_loss, training_noise
from ..progress import Reporter


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

    def validate(self) -> "TrainOptions":
        """Raise one clear MucsError for options that would fail late or train garbage."""
        from ..checks import check_seed

        def integer(name, v, lo, hi):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
                raise MucsError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")

        def number(name, v, lo, hi, lo_open=False, hi_open=False):
            ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                raise MucsError(f"{name} must be a finite number in {'(' if lo_open else '['}{lo}, {hi}"
                                f"{')' if hi_open else ']'}, got {v!r}")
        integer("steps", self.steps, 1, 10**8)
        integer("batch size", self.batch_size, 1, 65536)
        number("learning rate", self.lr, 0, 1, lo_open=True)
        check_seed(self.seed, "seed")
        number("EMA decay", self.ema_decay, 0, 1, hi_open=True)
        ch = tuple(self.channels) if isinstance(self.channels, (list, tuple)) else ()
        if not 1 <= len(ch) <= 8 or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                                            and 1 <= c <= 4096 for c in ch):
            raise MucsError(f"channels must be 1 to 8 integers in 1..4096, got {self.channels!r}")
        groups = min(32, min(ch))
        bad = [c for c in ch if c % groups]
        if bad:
            raise MucsError(f"channels {','.join(map(str, ch))}: every width must be divisible by the group-norm "
                            f"group count {groups} (= min(32, smallest width)); {bad[0]} is not")
        integer("layers per block", self.layers_per_block, 1, 16)
        integer("timesteps", self.num_train_timesteps, 2, 100000)
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise MucsError(f"prediction type must be epsilon, v_prediction or sample, got {self.prediction_type!r}")
        integer("warm-up steps", self.warmup_steps, 0, 10**8)
        number("weight decay", self.weight_decay, 0, 10)
        integer("log interval", self.log_every, 1, 10**8)
        integer("save interval", self.save_every, 0, 10**8)
        try:
            from diffusers import DDPMScheduler
            DDPMScheduler(num_train_timesteps=int(self.num_train_timesteps), beta_schedule=self.beta_schedule,
                          prediction_type=self.prediction_type)
        except NotImplementedError as e:
            raise MucsError(f"beta schedule {self.beta_schedule!r} is not supported by diffusers' DDPMScheduler "
                            f"(known: {', '.join(_beta_schedules())})") from e
        return self


def _beta_schedules() -> list:
    import typing
    from diffusers import DDPMScheduler
    try:
        hint = typing.get_type_hints(DDPMScheduler.__init__).get("beta_schedule")
        names = [a for a in typing.get_args(hint) if isinstance(a, str)]
    except Exception:
        names = []
    return names or ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"]


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


def ema_averager(parameters, decay: float):
    """diffusers' EMAModel over `parameters`, with the recipe's decay: min(decay, k/(9+k)) at the k-th
    update (1 − (1 + k/9)^−1 with update_after_step=−1, inv_gamma=9, power=1). Its default warm-up
    would use decay 0 at the first update and (1+s)/(10+s) one update late."""
    from diffusers.training_utils import EMAModel
    return EMAModel(parameters, decay=float(decay), min_decay=0.0, update_after_step=-1, use_ema_warmup=True,
                    inv_gamma=9.0, power=1.0, foreach=True)


def train(data: TrainingSet, out_dir: str, opts: TrainOptions, device: str | torch.device = "cpu", progress=None, cancel=None,
          exclude: Optional[np.ndarray] = None, force: bool = False) -> dict:
    """Train from scratch, deterministically for a given seed and `exclude` set (indices left out),
    and save EMA weights to `out_dir` (written atomically). Returns the training record.
    Options and `out_dir` are checked first: an existing `out_dir` that is not a model written by
    `mucs train` (nor empty) is refused unless `force`, and the training data is never replaced."""
    from diffusers import DDPMScheduler
    opts.validate()
    check_out_dir(out_dir, "model", force=force, what="output folder", protect=[data.source])
    levels = len(opts.channels) - 1
    if data.size % (2 ** levels):
        raise MucsError(f"{data.size}x{data.size} images cannot go through {levels} down-sampling steps "
                        f"({len(opts.channels)} channel widths): the size must be divisible by {2 ** levels}")
    report = Reporter(progress, cancel)
    keep = np.arange(len(data)) if exclude is None else np.setdiff1d(np.arange(len(data)), np.asarray(exclude))
    torch.manual_seed(opts.seed)
    g = torch.Generator().manual_seed(opts.seed)
    num_classes = data.num_classes
    try:   # diffusers checks some configurations only in the first forward pass: try one item now
        unet = build_unet(opts, data.size, data.channels, num_classes)
        with torch.no_grad():
            unet(torch.zeros(1, data.channels, data.size, data.size), torch.zeros(1, dtype=torch.long),
                 class_labels=torch.zeros(1, dtype=torch.long) if num_classes else None)
    except (ValueError, ZeroDivisionError, RuntimeError, TypeError) as e:
        raise MucsError(f"cannot build a UNet with channels {','.join(map(str, opts.channels))}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from e
    unet = unet.to(device).train()
    ema = copy.deepcopy(unet).eval()      # the saved model: the averages are copied into it before each save
    for p in ema.parameters():
        p.requires_grad_(False)
    averager = ema_averager(unet.parameters(), opts.ema_decay)
    sched: Any = DDPMScheduler(num_train_timesteps=opts.num_train_timesteps, beta_schedule=opts.beta_schedule,
                          prediction_type=opts.prediction_type)
    ac = sched.alphas_cumprod.to(torch.float32).to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    # torch's LambdaLR, not diffusers' constant_with_warmup: that one takes its first step at lr 0 (weights 0.003 off in 15 steps)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, opts.warmup_steps)))
    shape = (data.channels, data.size, data.size)
    family = family_of(unet)
    predict = lambda x, t, c: family.predict(unet, x, t, c)  # noqa: E731
    images = data.tensor(keep)
    labels = data.label_tensor(keep)
    losses, window, t_start = [], [], time.perf_counter()
    for step in range(opts.steps):
        idx = torch.randint(0, len(keep), (opts.batch_size,), generator=g)
        t, eps = training_noise(opts.batch_size, shape, opts.num_train_timesteps, g, device)
        x0 = images[idx].to(device)
        # horizontal flips would change which training image a query matches: no augmentation
        y = labels[idx].to(device) if labels is not None else None
        loss = per_item_loss(predict, ac, opts.prediction_type, x0, None if y is None else {"class_labels": y}, t, eps).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        warm.step()
        averager.step(unet.parameters())
        window.append(float(loss.detach()))
        if not math.isfinite(window[-1]):
            raise MucsError(f"non-finite values in the training loss during training (step {step + 1}: "
                            f"{window[-1]}): lower the learning rate; nothing was saved"
                            + (" after the last periodic save" if opts.save_every else ""))
        if (step + 1) % opts.log_every == 0 or step + 1 == opts.steps:
            losses.append(dict(step=step + 1, loss=float(np.mean(window))))
            window = []
            report("training", (step + 1) / opts.steps, step=step + 1, loss=losses[-1]["loss"])
        if opts.save_every and (step + 1) % opts.save_every == 0 and step + 1 < opts.steps:
            averager.copy_to(ema.parameters())
            save_model(ema, sched, _record(opts, data, keep, losses, t_start, unet, device, step + 1), out_dir,
                       force=force)
            force = False   # replaced once: from now on out_dir holds our model
    record = _record(opts, data, keep, losses, t_start, unet, device, opts.steps)
    averager.copy_to(ema.parameters())
    save_model(ema.cpu(), sched, record, out_dir, force=force)
    return record


def _record(opts, data, keep, losses, t_start, unet, device, steps_done) -> dict:
    return dict(asdict(opts), channels=list(opts.channels), steps_done=steps_done, num_train=int(len(keep)),
                num_classes=data.num_classes, class_names=data.class_names, data=shown_path(data.source),
                data_fingerprint=data.fingerprint(), excluded=int(len(data) - len(keep)),
                train_seconds=time.perf_counter() - t_start, final_loss=losses[-1]["loss"] if losses else None,
                loss_curve=losses, parameters=int(sum(p.numel() for p in unet.parameters())), device=str(device))


def save_model(unet, scheduler, record: dict, out_dir: str, force: bool = False) -> None:
    """Save unet/ (safetensors) + scheduler/ + model_index.json (a DDPMPipeline folder that
    `DDPMPipeline.from_pretrained` opens) + mucs_train.json and the marker; the folder appears whole
    or not at all, and files in `out_dir` that we did not write are kept (move_dir_into_place)."""
    from ..checks import dumps_strict
    tmp = staging_dir(out_dir)   # .tmp-<name>-*: recover_dir knows it
    try:
        unet.save_pretrained(os.path.join(tmp, "unet"), safe_serialization=True)
        scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
        write_pipeline_index(tmp, scheduler)
        with open(os.path.join(tmp, TRAIN_CONFIG), "w") as f:
            f.write(dumps_strict(record, TRAIN_CONFIG, indent=1))
        move_dir_into_place(tmp, out_dir, kind="model", force=force)
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
