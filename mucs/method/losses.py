"""Steps 1, 2 and 4: loss matrices over (training item, noise) and the null loss."""
import os
from typing import Optional

import numpy as np
import torch

from ..sources.families import cond_repeat, cond_to
from ..sources.inputs import model_inputs
from ..sources.models import alphas_cumprod, per_item_loss
from .noise import NoiseSet, TrainingNoise


# The loss definition's version, part of every cache key of numbers it produces (L_o, L_null, L_u, the
# reference skews). Bump it with any change to the per-item loss, the loss matrices, the null loss, the
# noise sets or unlearning that alters a number: caches made by the old code are then never read.
# tests/test_cache_versions.py pins the outputs of version LOSS_VERSION on a fixed tiny case and fails
# when they change without a bump. Keys of version 1 (before 2026-12-07) carried no version.
LOSS_VERSION = 2


def train_noise_for(model, s) -> TrainingNoise:
    """The training-time noise of unlearning and L_null that the settings `s` ask for."""
    return TrainingNoise(model.scheduler.alphas_cumprod, s.train_noise, s.sigma_min, s.sigma_max, s.p_mean, s.p_std)


class _Chunks(torch.utils.data.Dataset):
    """Chunk c of the rows as (positions, raw x0 (uint8 pixels or float latents), condition dict or
    None): what the DataLoader hands to the loss loop, so pixels travel as uint8 and become float on
    the device."""

    def __init__(self, inputs, rows: np.ndarray, per_chunk: int):
        self.inputs, self.rows, self.per_chunk = inputs, rows, per_chunk

    def __len__(self):
        return (len(self.rows) + self.per_chunk - 1) // self.per_chunk

    def __getitem__(self, c):
        pos = np.arange(c * self.per_chunk, min(len(self.rows), (c + 1) * self.per_chunk))
        idx = self.rows[pos]
        return torch.from_numpy(pos), self.inputs.raw(idx), self.inputs.cond(idx)


LOADER_MIN_ITEMS = 4096   # below this, starting worker processes costs more than it overlaps


def loader_workers(device, n_items: int) -> int:
    """DataLoader workers for the loss loop: none on the CPU (they would take cores from the
    forward passes) or for a few items (e.g. why-this-image's rows), a few on a GPU for a
    training set (slicing and pinning overlap the device's work)."""
    if torch.device(device).type == "cpu" or n_items < LOADER_MIN_ITEMS:
        return 0
    return min(4, os.cpu_count() or 1)


def _functional_forward(template, state, args, kwargs):
    return torch.func.functional_call(template, state, args, kwargs)


# per process: per (backend, architecture) a template network and its torch.compile'd functional forward. The
# weights are inputs of the compiled graph, not constants, so every network of that architecture (each query's
# unlearned copy) runs through the graph compiled once, without guards on the module object
_COMPILED: dict = {}


class Forward:
    """The model's prediction `model.predict(net, x, t, cond)`, through torch.compile (`backend`:
    inductor, aot_eager) or as is ("off"). The first call of a shape compiles (minutes for inductor on
    a CPU); later calls reuse it, for this network and for any other of the same architecture."""

    def __init__(self, model, net, backend: str = "off"):
        self.model, self.net, self.compiled = model, net, None
        if backend != "off":
            arch = (backend, type(net).__name__,
                    tuple((n, tuple(p.shape), p.dtype, str(p.device)) for n, p in net.state_dict().items()))
            if arch not in _COMPILED:
                _COMPILED[arch] = (net, torch.compile(_functional_forward, backend=backend, dynamic=False))
            self.template, self.compiled = _COMPILED[arch]

    def __call__(self, x, t, cond=None):
        family = self.model.family
        if self.compiled is None:
            return family.predict(self.net, x, t, cond)
        # plain tensors (detached views, no copy): dynamo guards an nn.Parameter input by identity
        state = {n: p.detach() for n, p in self.net.named_parameters()}
        state.update((n, b.detach()) for n, b in self.net.named_buffers())
        args, kwargs = family.inputs(self.net, x, t, cond)
        return family.output(self.compiled(self.template, state, args, kwargs), x.shape[1])


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
        return _loss_matrix(Forward(model, unet, compile), next(unet.parameters()).device, model, data, noise_set, batch_size,
                            report, stage, weighting, sigma_data, items, workers, out, precision, channels_last)
    finally:
        if channels_last:
            unet.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def _loss_matrix(forward, dev, model, data, noise_set, batch_size, report, stage, weighting, sigma_data, items,
                 workers, out, precision, channels_last) -> np.ndarray:
    ac = alphas_cumprod(model).to(dev)
    inputs = model_inputs(model, data)
    rows = np.arange(len(inputs)) if items is None else np.asarray(items, np.int64)
    K, N = len(noise_set), len(rows)
    t_all, eps_all = noise_set.timesteps.to(dev), noise_set.eps.to(dev)
    per_chunk = max(1, batch_size // K)
    out = np.empty((N, K), np.float32) if out is None else out
    workers = loader_workers(dev, N) if workers is None else workers
    loader = torch.utils.data.DataLoader(_Chunks(inputs, rows, per_chunk), batch_size=None, shuffle=False,
                                         num_workers=workers, pin_memory=dev.type == "cuda")
    for pos, raw, cond in loader:
        n = len(pos)
        x0 = inputs.to_x0(raw, dev, non_blocking=True).repeat_interleave(K, 0)
        cond = cond_repeat(cond_to(cond, dev, non_blocking=True), K)
        t = t_all.repeat(n)
        eps = eps_all.repeat(n, 1, 1, 1)
        if channels_last:
            x0, eps = x0.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = per_item_loss(forward, ac, model.prediction_type, x0, cond, t, eps, weighting, sigma_data)
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
    return _mean_training_loss(model, model.fresh_copy(s.seed), data, s, s.null_batches, report, "null loss")


@torch.inference_mode()
def trained_loss(model, data, s, batches: int = 4) -> float:
    """The trained model's mean loss over the first `batches` of L_null's batches (same items and
    noise): how far below L_null the model is, i.e. whether it was trained on this data at all."""
    return _mean_training_loss(model, model.unet, data, s, min(batches, s.null_batches), None, "")


def _mean_training_loss(model, net, data, s, batches: int, report, stage: str) -> float:
    """Mean loss of `net` over `batches` random training batches (each item with its own condition)
    with training-time noise, drawn from the seed so that every call sees the same batches."""
    inputs = model_inputs(model, data)
    dev = model.device
    ac = alphas_cumprod(model).to(dev)
    g = torch.Generator().manual_seed(int(s.seed) + 1)
    noise = train_noise_for(model, s)
    total = 0.0
    for b in range(batches):
        idx = torch.randint(0, len(inputs), (s.null_batch_size,), generator=g).numpy()
        t, eps = noise.sample(s.null_batch_size, model.x0_shape, g, dev)
        total += float(per_item_loss(model.predictor(net), ac, model.prediction_type, inputs.x0(idx).to(dev),
                                     cond_to(inputs.cond(idx), dev), t, eps, s.loss_weighting, s.sigma_data).mean())
        if report is not None:
            report(stage, (b + 1) / batches)
    return total / batches
