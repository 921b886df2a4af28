"""Step 3: mirrored, bounded unlearning — make a copy of the model forget the query with bounded
gradient ascent while it keeps fitting the training data."""
import copy
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .losses import train_noise_for
from ..sources.families import cond_cat, cond_expand, cond_index, cond_to
from ..sources.inputs import model_inputs
from ..sources.models import alphas_cumprod, per_item_loss
from ..errors import MucsError
from ..settings import LR_RANGE, Settings


@dataclass
class UnlearnResult:
    unet: torch.nn.Module
    steps: int
    converged: bool                            # True: stopped by the tolerance rule, False: hit the cap
    curve: list = field(default_factory=list)  # one dict per evaluated batch: step, loss_f, loss_r
    lr: float = 0.0


def forget_terms(losses: torch.Tensor, loss_null: float, bounded: bool = True) -> torch.Tensor:
    """min(ℓ_b, L_null) per forget item (ℓ_b when unbounded): an item already as bad as an untrained
    model gives no gradient."""
    return losses.clamp(max=loss_null) if bounded else losses


def forget_loss(losses: torch.Tensor, loss_null: float, bounded: bool = True) -> torch.Tensor:
    """L_f = mean_b min(ℓ_b, L_null)."""
    return forget_terms(losses, loss_null, bounded).mean()


def objective(losses: torch.Tensor, is_forget: torch.Tensor, loss_null: float, s: Settings,
              batch: Optional[int] = None) -> tuple:
    """Step 3's objective, the one the unlearning loop differentiates: (L, L_f, L_r) with
    L_f = (1/B)·Σ_forget min(ℓ, L_null) (ℓ unbounded when `s.bounded` is off), L_r = (1/B)·Σ_retain ℓ
    (0 when `s.retain` is off) and L = L_r − λ·L_f, λ = `s.lam`.

    `losses` are per-item losses, `is_forget` marks the forget items. B is the forget (and retain) batch
    size: `batch`, by default the number of forget items. A micro-batch passes the whole step's B, so the
    chunks' terms add up to the step's. So ∂L/∂ℓ is 1/B for a retain item and −λ/B for a forget item
    below L_null, 0 above it. L_f and L_r come back in float64 (what the stop rule and the curve read),
    L in the losses' dtype."""
    B = int(is_forget.sum()) if batch is None else int(batch)
    if B < 1:
        raise ValueError("the objective needs a batch size B ≥ 1")
    sum_f = forget_terms(losses[is_forget], loss_null, s.bounded).sum()
    sum_r = losses[~is_forget].sum() if s.retain else losses.new_zeros(())
    L = (sum_r - s.lam * sum_f) / B        # one term per item, so micro-batches add up
    return L, sum_f.double() / B, sum_r.double() / B


def _one_batch(forget, retain):
    """The step's items as one (x, cond, t, ε, is_forget) batch: the forget and retain batches share a
    forward, which runs faster than two halves and gives each item the same loss (eval mode; GroupNorm
    and LayerNorm normalise per item)."""
    def mark(part, value):
        return (*part, torch.full((len(part[0]),), value, dtype=torch.bool, device=part[0].device))
    f = mark(forget, True)
    if retain is None:
        return f
    r = mark(retain, False)
    return tuple(cond_cat(a, b) if i == 1 else torch.cat([a, b]) for i, (a, b) in enumerate(zip(f, r)))


def _slices(n: int, chunk):
    return [slice(0, n)] if not chunk else [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def should_stop(loss_f: float, loss_null: float, tol: float) -> bool:
    """The stop rule, checked before every step: the query is forgotten to within τ of L_null."""
    return loss_f >= (1 - tol) * loss_null


def frozen_names(unet: torch.nn.Module, patterns, trainable=None) -> list:
    """Parameters unlearning leaves alone: those matching a `patterns` substring, and all outside
    `trainable` when it is given (a LoRA fine-tune's adapter)."""
    return [n for n, _ in unet.named_parameters()
            if any(p in n for p in patterns) or (trainable is not None and n not in trainable)]


def unlearning_lr(model, s: Settings) -> float:
    """The unlearning learning rate: `s.lr` when given, else the model's training lr ÷ `s.lr_factor`;
    one MucsError when it falls outside LR_RANGE (a no-op or a divergent unlearning saves garbage)."""
    if s.lr is not None:
        return s.lr
    train = model.learning_rate or s.default_lr
    lr = train / s.lr_factor
    lo, hi = LR_RANGE
    if not lo <= lr <= hi:
        raise MucsError(f"the unlearning lr, training lr {train:g} ÷ lr factor {s.lr_factor:g} = {lr:g}, must be in "
                        f"[{lo:g}, {hi:g}]: change --lr-factor or --train-lr, or give --unlearning-lr")
    return lr


def unlearn(model, data, query_x: torch.Tensor, query_cond, loss_null: float, s: Settings, report=None) -> UnlearnResult:
    """Copy the model's denoiser (kept in eval mode on purpose: no dropout), freeze the parameters
    matching `s.frozen` (and, for a LoRA fine-tune, all but the adapter's by default), and step AdamW
    on L = L_r − λ·L_f until L_f ≥ (1 − τ)·L_null or the step cap. `query_x` is the query's x0 (its
    latents for a latent model); `query_cond` its one-item condition dict (a class label is accepted
    too), the retain items each get their own (label or caption)."""
    inputs = model_inputs(model, data)
    unet = copy.deepcopy(model.unet).eval()
    frozen = set(frozen_names(unet, s.frozen, model.trainable_names(s.unlearn_params)))
    params = []
    for n, p in unet.named_parameters():
        p.requires_grad_(n not in frozen)
        if n not in frozen:
            params.append(p)
    lr = unlearning_lr(model, s)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=s.weight_decay)
    dev = model.device
    ac = alphas_cumprod(model).to(dev)
    noise = train_noise_for(model, s)
    shape = tuple(query_x.shape)
    g = torch.Generator().manual_seed(int(s.seed) + 2)
    B = s.batch_size
    xq = query_x.to(dev).unsqueeze(0).expand(B, *shape)
    if query_cond is not None and not isinstance(query_cond, dict):     # a class label
        query_cond = model.label_cond([int(query_cond)])
    if (model.conditioning != "none") != (query_cond is not None):
        raise MucsError({"class": "a class-conditional model needs the query's label, an unconditional one none",
                         "text": "a text-conditional model needs the query's prompt"}.get(
                            model.conditioning, "an unconditional model takes no label or prompt"))
    # the condition exactly as for the retain items below (both present or both None), so the two share a forward
    yq = cond_expand(cond_to(query_cond, dev), B)
    curve, step, converged = [], 0, False
    chunk = s.unlearn_chunk if s.unlearn_chunk > 0 else None
    while True:
        # forget batch: the query B times, fresh training-time noise
        t_f, eps_f = noise.sample(B, shape, g, dev)
        forget = (xq, yq, t_f, eps_f)
        # retain batch: B random training items with their own labels, independent noise
        retain = None
        if s.retain:
            idx = torch.randint(0, len(inputs), (B,), generator=g).numpy()
            t_r, eps_r = noise.sample(B, shape, g, dev)
            retain = (inputs.x0(idx).to(dev), cond_to(inputs.cond(idx), dev), t_r, eps_r)
        may_step = step < s.max_steps
        opt.zero_grad(set_to_none=True)
        lf, lr_ = 0.0, 0.0
        x, yy, t, eps, is_f = _one_batch(forget, retain)
        for sl in _slices(len(x), chunk):
            losses = per_item_loss(model.predictor(unet), ac, model.prediction_type, x[sl], cond_index(yy, sl), t[sl],
                                   eps[sl], s.loss_weighting, s.sigma_data)
            L, L_f, L_r = objective(losses, is_f[sl], loss_null, s, batch=B)
            lf, lr_ = lf + float(L_f.detach()), lr_ + float(L_r.detach())
            if chunk is not None and may_step:
                L.backward()                 # micro-batch: accumulate now, free its activations
        curve.append(dict(step=step, loss_f=lf, loss_r=lr_))
        if report is not None:
            report("unlearning", min(1.0, lf / ((1 - s.tol) * loss_null)) if loss_null > 0 else 1.0,
                   step=step, loss_f=lf, loss_r=lr_, loss_null=loss_null)
        if should_stop(lf, loss_null, s.tol):
            converged = True     # (a micro-batched step's gradients were computed and are dropped)
            break
        if not may_step:
            break
        if chunk is None:
            L.backward()                     # whole batch: one backward, after the stop check
        opt.step()
        step += 1
    for p in unet.parameters():
        p.requires_grad_(False)
    return UnlearnResult(unet=unet.eval(), steps=step, converged=converged, curve=curve, lr=lr)


def skew(loss_unlearned: np.ndarray, loss_original: np.ndarray, normalised: bool = True) -> np.ndarray:
    """Step 5: score_i = mean_k (L_u − L_o) / (L_u + L_o + 1e-3); un-normalised: mean_k (L_u − L_o).
    NaN entries of L_u (levels a screened item was not scored on) are left out of its mean."""
    lu, lo = loss_unlearned.astype(np.float64), loss_original.astype(np.float64)
    diff = lu - lo
    if normalised:
        diff = diff / (lu + lo + 1e-3)
    if not np.isnan(diff).any():
        return diff.mean(1)
    return np.nanmean(diff, 1)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first (ties broken by index, so it is deterministic)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:k]
