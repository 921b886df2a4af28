"""Attribution by unlearning (AbU; Wang, Hertzmann, Efros, Zhu, Zhang, *Data attribution for
text-to-image models by unlearning synthesized images*, NeurIPS 2024), as in their public code for
models trained from scratch (PeterWang512/AttributeByUnlearning, mscoco/):

1. the diagonal Fisher information F of the model on its training set: the mean squared per-item
   gradient of the diffusion loss, each item at a random timestep with fresh noise, over 5 epochs
   (query-independent: computed once and cached);
2. unlearn the query by their EWC-regularised objective, which they optimise in closed form: one
   Newton step of gradient *ascent* on the query's diffusion loss preconditioned by the Fisher,
   θ ← θ + lr · ḡ / (F · N), ḡ the mean gradient over batch × accumulation draws of (t, ε) (t drawn
   without replacement per batch), lr = 0.01, on the cross-attention k/v weights of a text-to-image
   model and on every weight of a model without cross-attention (their ``all`` selection);
3. score = L_after − L_before for every training item: the diffusion loss averaged over 20 timesteps
   spaced t = 0, T/20, ..., with noise fixed per (item, timestep) and the same for both models; no
   normalisation (their `influence`). Training here has no flips, so there is no max over flips.

How it differs from MUCS's ablation ``mucs_plain_ga`` (unbounded gradient ascent, no retain term):
plain GA takes many AdamW steps (lr = training lr ÷ 10, biases frozen) until the query's loss reaches
(1 − τ)·L_null, and scores by MUCS's normalised skew on the K consistent Karras noise levels; AbU
takes one Fisher-preconditioned step of fixed size (the EWC term keeps other knowledge, not a retain
batch), never looks at L_null, and scores by the raw loss increase on 20 evenly spaced timesteps.
"""
import logging
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..cache import cache_file, cache_key, load_arrays
from ..cache import save_arrays_best_effort as save_arrays
from ..errors import MucsError
from ..sources.models import alphas_cumprod
from .dtrak import fixed_noise, options_from, output_fn, per_sample_grads, predict, spaced_timesteps, trainable

log = logging.getLogger("mucs")


@dataclass(frozen=True)
class AbuOptions:
    """AbU settings, defaults from their MSCOCO (trained-from-scratch) script."""
    lr: float = 0.01             # unlearn_lr
    steps: int = 1               # unlearn_steps
    batch: int = 80              # unlearn_batch_size
    accum: int = 625             # unlearn_grad_accum_steps: batch × accum = 50,000 draws per step
    loss_timesteps: int = 20     # loss_time_samples
    fisher_epochs: int = 5
    weights: str = "auto"        # auto (cross-attn-kv when the model has cross-attention, else all) | all | attn
    seed: int = 0

    def validate(self) -> "AbuOptions":
        checks = [(self.lr > 0 and np.isfinite(self.lr), "lr must be a finite number > 0"),
                  (self.steps >= 1 and self.batch >= 1 and self.accum >= 1, "steps, batch and accum must be ≥ 1"),
                  (self.loss_timesteps >= 1 and self.fisher_epochs >= 1, "loss_timesteps and fisher_epochs must be ≥ 1"),
                  (self.weights in ("auto", "all", "attn", "cross-attn", "cross-attn-kv"),
                   "weights must be auto, all, attn, cross-attn or cross-attn-kv")]
        for ok, msg in checks:
            if not ok:
                raise MucsError(f"AbU option: {msg}")
        return self


def abu_options(d: Optional[dict]) -> AbuOptions:
    return options_from(d, AbuOptions)


def selected(unet, weights: str) -> list:
    """The parameter names AbU updates (their get_param_pattern_list)."""
    names = [n for n, _ in unet.named_parameters()]
    if weights == "auto":
        weights = "cross-attn-kv" if any("attn2" in n for n in names) else "all"
    patterns = {"all": [], "attn": [["attn"]], "cross-attn": [["attn2"]], "cross-attn-kv": [["attn2"], ["to_k", "to_v"]]}[weights]
    out = [n for n in names if all(any(p in n for p in group) for group in patterns)]
    if not out:
        raise MucsError(f"AbU: no parameter matches the weight selection {weights!r}")
    return out


def _labels(model, data, idx):
    y = data.label_tensor(idx)
    return y.to(model.device) if (y is not None and model.num_classes) else None


def fisher(model, data, o: AbuOptions, report=None) -> dict:
    """{name: diagonal Fisher}: mean over `fisher_epochs` passes of the squared per-item gradient of
    the diffusion loss, each item at a uniformly random timestep with fresh noise (their compute_fisher)."""
    dev = model.device
    ac = alphas_cumprod(model).to(dev)
    fn = output_fn(model.unet, ac, model.prediction_type, "loss")
    params, buffers = trainable(model.unet)
    names = list(params)
    g = torch.Generator().manual_seed(int(o.seed) + 11)
    total: Optional[torch.Tensor] = None
    count, B = 0, 32
    N = len(data)
    for epoch in range(o.fisher_epochs):
        for s in range(0, N, B):
            idx = np.arange(s, min(N, s + B))
            x0 = data.tensor(idx).to(dev)
            t = torch.randint(0, len(ac), (len(idx),), generator=g).to(dev)
            eps = torch.randn(x0.shape, generator=g).to(dev)
            sq = per_sample_grads(fn, params, buffers, x0, t, _labels(model, data, idx), eps, names).double() ** 2
            total = sq.sum(0) if total is None else total + sq.sum(0)
            count += len(idx)
            if report is not None:
                report("fisher", (epoch * N + s + len(idx)) / (o.fisher_epochs * N))
    assert total is not None    # fisher_epochs ≥ 1 and N ≥ 1 (validated)
    flat = (total / count).float()
    out, pos = {}, 0
    for n in names:
        k = params[n].numel()
        out[n] = flat[pos:pos + k].view_as(params[n])
        pos += k
    return out


def item_losses(model, data, o: AbuOptions, unet=None, report=None, stage="losses") -> np.ndarray:
    """(N,) diffusion loss of every training item averaged over `loss_timesteps` spaced timesteps,
    noise fixed per (item, timestep): the same draws for the original and the unlearned model."""
    unet = model.unet if unet is None else unet
    dev = model.device
    ac = alphas_cumprod(model).to(dev)
    ts = spaced_timesteps(len(ac), o.loss_timesteps).to(dev)
    S, N, B = len(ts), len(data), max(1, 512 // len(ts))
    params, buffers = trainable(unet)
    out = np.empty(N, np.float64)
    with torch.inference_mode():
        for s in range(0, N, B):
            idx = np.arange(s, min(N, s + B))
            x0 = data.tensor(idx).to(dev).repeat_interleave(S, 0)
            eps = torch.cat([fixed_noise(o.seed, ("abu", int(i)), S, x0.shape[1:]) for i in idx]).to(dev)
            t = ts.repeat(len(idx))
            y = _labels(model, data, idx)
            y = None if y is None else y.repeat_interleave(S, 0)
            a = ac[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            pred = predict(unet, params, buffers, x_t, t, y)
            target = eps if model.prediction_type == "epsilon" else (
                a.sqrt() * eps - (1 - a).sqrt() * x0 if model.prediction_type == "v_prediction" else x0)
            out[idx] = ((target - pred) ** 2).flatten(1).mean(1).view(len(idx), S).double().mean(1).cpu().numpy()
            if report is not None:
                report(stage, (s + len(idx)) / N)
    return out


def unlearn(model, fisher_diag: dict, n_train: int, x: torch.Tensor, label, o: AbuOptions, report=None):
    """A copy of the UNet after `steps` Fisher-preconditioned ascent steps on the query's loss."""
    import copy
    unet = copy.deepcopy(model.unet).eval()
    names = set(selected(unet, o.weights))
    dev = model.device
    ac = alphas_cumprod(model).to(dev)
    T = len(ac)
    B = o.batch
    xq = x.to(dev)[None].expand(B, *x.shape)
    yq = torch.full((B,), int(label), dtype=torch.long, device=dev) if model.num_classes else None
    g = torch.Generator().manual_seed(int(o.seed) + 23)
    params = [(n, p) for n, p in unet.named_parameters()]
    for n, p in params:
        p.requires_grad_(n in names)
    for step in range(o.steps):
        unet.zero_grad(set_to_none=True)
        for a_ in range(o.accum):
            t = torch.randperm(T, generator=g)[:B]
            if len(t) < B:           # fewer timesteps than the batch: draw the rest with replacement
                t = torch.cat([t, torch.randint(0, T, (B - len(t),), generator=g)])
            t = t.to(dev)
            eps = torch.randn(xq.shape, generator=g).to(dev)
            a = ac[t].view(-1, 1, 1, 1)
            pred = unet(a.sqrt() * xq + (1 - a).sqrt() * eps, t, class_labels=yq).sample
            target = eps if model.prediction_type == "epsilon" else (
                a.sqrt() * eps - (1 - a).sqrt() * xq if model.prediction_type == "v_prediction" else xq)
            ((pred - target) ** 2).mean().backward()
            if report is not None:
                report("unlearning", (step * o.accum + a_ + 1) / (o.steps * o.accum))
        with torch.no_grad():
            for n, p in params:
                if n in names and p.grad is not None:
                    f = fisher_diag[n].to(p.device).double()
                    # a parameter with zero Fisher had zero gradient on every item: it is left as is
                    upd = torch.where(f > 0, o.lr * p.grad.double() / (f.clamp_min(1e-300) * n_train) / o.accum,
                                      torch.zeros_like(f))
                    p.add_(upd.to(p.dtype))
    for p in unet.parameters():
        p.requires_grad_(False)
    return unet


class Abu:
    """AbU on one model and training set, with the Fisher and the original losses cached like L_o."""

    def __init__(self, model, data, cache_dir: str, options: Optional[AbuOptions] = None):
        self.model, self.data, self.cache_dir = model, data, cache_dir
        self.o = (options or AbuOptions()).validate()
        self._fisher: Optional[tuple] = None
        self._before: Optional[tuple] = None

    def _key(self, kind, **parts):
        return cache_key(kind=kind, model=self.model.fingerprint(), data=self.data.fingerprint(),
                         prediction=self.model.prediction_type, seed=self.o.seed, **parts)

    def _cached(self, kind, key, compute):
        path = cache_file(self.cache_dir, kind, key)
        hit = load_arrays(path, key)
        if hit is not None:
            log.info("%s: cache hit %s", kind, path)
            return hit, True
        arrays = compute()
        save_arrays(path, key, **arrays)
        return arrays, False

    def fisher(self, report=None) -> tuple:
        if self._fisher is None:
            names = [n for n, _ in self.model.unet.named_parameters()]
            key = self._key("abu_fisher", epochs=self.o.fisher_epochs)
            hit, cached = self._cached("abu_fisher", key, lambda: {
                f"p{i}": v.numpy() for i, v in enumerate(fisher(self.model, self.data, self.o, report).values())})
            self._fisher = ({n: torch.from_numpy(np.asarray(hit[f"p{i}"])) for i, n in enumerate(names)}, cached)
        return self._fisher

    def losses_before(self, report=None) -> tuple:
        if self._before is None:
            key = self._key("abu_loss_original", timesteps=self.o.loss_timesteps)
            hit, cached = self._cached("abu_loss_original", key, lambda: dict(
                loss=item_losses(self.model, self.data, self.o, report=report, stage="original losses")))
            self._before = (np.asarray(hit["loss"], np.float64), cached)
        return self._before

    def scores(self, x: torch.Tensor, label, report=None) -> tuple:
        """((N,) L_after − L_before, record with stage times)."""
        times = {}
        t0 = time.perf_counter()
        fd, f_cached = self.fisher(report)
        times["fisher"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        before, b_cached = self.losses_before(report)
        times["original_losses"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        unet = unlearn(self.model, fd, len(self.data), x, label, self.o, report)
        times["unlearning"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        after = item_losses(self.model, self.data, self.o, unet=unet, report=report, stage="unlearned losses")
        times["unlearned_losses"] = time.perf_counter() - t0
        s = after - before
        if not np.isfinite(s).all():
            raise MucsError("AbU scores are not finite (the unlearning step diverged; try a smaller lr)")
        return s, dict(stage_times=times, loss_original=before, loss_unlearned=after,
                       cache_hits=dict(fisher=f_cached, original_losses=b_cached))
