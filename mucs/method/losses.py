"""Steps 1, 2 and 4: loss matrices over (training item, noise) and the null loss."""
import os
from typing import Optional

import numpy as np
import torch

from ..sources.models import alphas_cumprod, per_item_loss
from .noise import NoiseSet, TrainingNoise


def train_noise_for(model, s) -> TrainingNoise:
    """The training-time noise of unlearning and L_null that the settings `s` ask for."""
    return TrainingNoise(model.scheduler.alphas_cumprod, s.train_noise, s.sigma_min, s.sigma_max, s.p_mean, s.p_std)


class _Chunks(torch.utils.data.Dataset):
    """Chunk c of the rows as (positions, uint8 images (n, H, W, C), labels or None): what the
    DataLoader hands to the loss loop, so the set travels as uint8 and becomes float on the device."""

    def __init__(self, data, rows: np.ndarray, per_chunk: int):
        self.data, self.rows, self.per_chunk = data, rows, per_chunk

    def __len__(self):
        return (len(self.rows) + self.per_chunk - 1) // self.per_chunk

    def __getitem__(self, c):
        pos = np.arange(c * self.per_chunk, min(len(self.rows), (c + 1) * self.per_chunk))
        idx = self.rows[pos]
        return torch.from_numpy(pos), self.data.uint8_tensor(idx), self.data.label_tensor(idx)


LOADER_MIN_ITEMS = 4096   # below this, starting worker processes costs more than it overlaps


def loader_workers(device, n_items: int) -> int:
    """DataLoader workers for the loss loop: none on the CPU (they would take cores from the
    forward passes) or for a few items (e.g. why-this-image's rows), a few on a GPU for a
    training set (slicing and pinning overlap the device's work)."""
    if torch.device(device).type == "cpu" or n_items < LOADER_MIN_ITEMS:
        return 0
    return min(4, os.cpu_count() or 1)


class _Output:
    def __init__(self, sample):
        self.sample = sample


def _forward(unet, x, t, y):
    return unet(x, t, class_labels=y).sample


def _functional_forward(template, state, x, t, y):
    return torch.func.functional_call(template, state, (x, t), dict(class_labels=y)).sample


# per process: per (backend, architecture) a template UNet and its torch.compile'd functional forward. The
# weights are inputs of the compiled graph, not constants, so every UNet of that architecture (each query's
# unlearned copy) runs through the graph compiled once, without guards on the module object
_COMPILED: dict = {}


class Forward:
    """`unet(x, t, class_labels=y).sample` through torch.compile (`backend`: inductor, aot_eager) or
    as is ("off"). The first call of a shape compiles (minutes for inductor on a CPU); later calls
    reuse it, for this UNet and for any other of the same architecture."""

    def __init__(self, unet, backend: str = "off"):
        self.unet, self.compiled = unet, None
        if backend != "off":
            arch = (backend, type(unet).__name__,
                    tuple((n, tuple(p.shape), p.dtype, str(p.device)) for n, p in unet.state_dict().items()))
            if arch not in _COMPILED:
                _COMPILED[arch] = (unet, torch.compile(_functional_forward, backend=backend, dynamic=False))
            self.template, self.compiled = _COMPILED[arch]

    def __call__(self, x, t, class_labels=None):
        if self.compiled is None:
            return _Output(_forward(self.unet, x, t, class_labels))
        # plain tensors (detached views, no copy): dynamo guards an nn.Parameter input by identity
        state = {n: p.detach() for n, p in self.unet.named_parameters()}
        state.update((n, b.detach()) for n, b in self.unet.named_buffers())
        return _Output(self.compiled(self.template, state, x, t, class_labels))


def loss_matrix(unet, model, data, noise_set: NoiseSet, batch_size: int = 512, report=None,
                stage: str = "losses", weighting: str = "none", sigma_data: float = 0.5, items=None,
                workers: Optional[int] = None, out: Optional[np.ndarray] = None, precision: str = "fp32",
                memory_format: str = "contiguous", compile: str = "off") -> np.ndarray:
    """L[i, k] = ℓ(x_i, y_i; t_k, ε_k) for every training item i (or the rows `items`) and every
    noise k of the set.

    Items are processed in chunks, each repeated K times, so one forward pass covers many
    (item, noise) pairs; the noise tensors are exactly the noise set's, shared by all items. The
    chunks come through a DataLoader (`workers` processes, pinned memory on a GPU) as uint8 and are
    scaled to [-1, 1] on the device; `out` may be a preallocated (e.g. memory-mapped) array.
    precision="bf16" runs the UNet under bf16 autocast (the losses are still formed in fp32);
    memory_format="channels_last" runs it with channels-last weights and inputs (the weights are
    put back afterwards); compile: a torch.compile backend, or "off". All three are machine choices:
    the losses agree with the defaults to float tolerance (bf16: to bf16's).
    """
    channels_last = memory_format == "channels_last"
    if channels_last:       # outside inference mode: converted weights must stay usable for training
        unet.to(memory_format=torch.channels_last)
    try:
        return _loss_matrix(Forward(unet, compile), next(unet.parameters()).device, model, data, noise_set, batch_size,
                            report, stage, weighting, sigma_data, items, workers, out, precision, channels_last)
    finally:
        if channels_last:
            unet.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def _loss_matrix(forward, dev, model, data, noise_set, batch_size, report, stage, weighting, sigma_data, items,
                 workers, out, precision, channels_last) -> np.ndarray:
    ac = alphas_cumprod(model).to(dev)
    rows = np.arange(len(data)) if items is None else np.asarray(items, np.int64)
    K, N = len(noise_set), len(rows)
    t_all, eps_all = noise_set.timesteps.to(dev), noise_set.eps.to(dev)
    per_chunk = max(1, batch_size // K)
    out = np.empty((N, K), np.float32) if out is None else out
    workers = loader_workers(dev, N) if workers is None else workers
    loader = torch.utils.data.DataLoader(_Chunks(data, rows, per_chunk), batch_size=None, shuffle=False,
                                         num_workers=workers, pin_memory=dev.type == "cuda")
    for pos, u8, y in loader:
        n = len(pos)
        # the same arithmetic as sources.data.to_model_range, done where the model is
        x0 = u8.to(dev, non_blocking=True).float().div(127.5).sub(1.0).movedim(-1, -3).repeat_interleave(K, 0)
        y = y.to(dev).repeat_interleave(K, 0) if (y is not None and model.num_classes) else None
        t = t_all.repeat(n)
        eps = eps_all.repeat(n, 1, 1, 1)
        if channels_last:
            x0, eps = x0.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = per_item_loss(forward, ac, model.prediction_type, x0, y, t, eps, weighting, sigma_data)
        out[pos.numpy()] = loss.view(n, K).float().cpu().numpy()
        if report is not None:
            report(stage, (int(pos[-1]) + 1) / N)
    return out


def screen_columns(K: int, n: int) -> np.ndarray:
    """`n` of the K noise levels, evenly spread from the highest to the lowest noise."""
    return np.unique(np.round(np.linspace(0, K - 1, max(1, min(n, K)))).astype(np.int64))


@torch.inference_mode()
def null_loss(model, data, s, report=None) -> float:
    """L_null: mean training loss of a freshly initialised model of the same architecture, over
    `s.null_batches` random training batches with training-time noise. The bound for the ascent."""
    fresh = model.fresh_copy(s.seed)
    dev = model.device
    ac = alphas_cumprod(model).to(dev)
    g = torch.Generator().manual_seed(int(s.seed) + 1)
    noise = train_noise_for(model, s)
    shape = (model.channels, model.size, model.size)
    total = 0.0
    for b in range(s.null_batches):
        idx = torch.randint(0, len(data), (s.null_batch_size,), generator=g).numpy()
        t, eps = noise.sample(s.null_batch_size, shape, g, dev)
        y = data.label_tensor(idx)
        y = y.to(dev) if (y is not None and model.num_classes) else None
        total += float(per_item_loss(fresh, ac, model.prediction_type, data.tensor(idx).to(dev), y, t, eps,
                                     s.loss_weighting, s.sigma_data).mean())
        if report is not None:
            report("null loss", (b + 1) / s.null_batches)
    return total / s.null_batches
