"""How long an attribution will take, said before it starts: a short probe of the model's forward
and forward+backward speed on this machine, scaled by what the settings ask for (K, N, B, the step
cap, screening) and by what is already cached. A newcomer's own model at the paper's settings can take
many minutes; the CLI and the app say so first."""
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..progress import format_seconds
from ..sources.families import cond_to
from ..sources.models import alphas_cumprod, per_item_loss

STEPS_SEEN = (0.3, 1.0)   # unlearning stops between these fractions of the step cap in the runs measured here


@dataclass
class Estimate:
    """Seconds per stage as (low, high), and which query-independent parts are cached already."""
    stages: dict
    cached: dict
    device: str = "cpu"

    @property
    def total(self) -> tuple:
        return tuple(sum(v[i] for v in self.stages.values()) for i in (0, 1))

    def text(self) -> str:
        lo, hi = self.total
        span = format_seconds(hi) if hi - lo < 0.2 * hi else f"{format_seconds(lo)}–{format_seconds(hi)}"
        def rng(v):
            return format_seconds(v[1]) if v[0] == v[1] else f"{format_seconds(v[0])}–{format_seconds(v[1])}"
        parts = [f"{k.replace('_', ' ')} {rng(v)}" for k, v in self.stages.items() if v[1] >= 0.5]
        done = [k.replace("_", " ") for k, c in self.cached.items() if c]
        return (f"about {span} on {self.device}" + (f" ({'; '.join(parts)})" if parts else "")
                + (f"; cached already: {', '.join(done)}" if done else "") + " — an estimate from a short probe")


def _timed(fn, repeat: int = 2) -> float:
    fn()                                   # warm-up (allocations, kernel choice)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def _batch(model, inputs, n: int):
    dev = model.device
    ac = alphas_cumprod(model).to(dev)
    idx = np.arange(n) % len(inputs)
    g = torch.Generator().manual_seed(0)
    x0 = inputs.x0(idx).to(dev)
    return (ac, x0, cond_to(inputs.cond(idx), dev), torch.randint(0, len(ac), (n,), generator=g).to(dev),
            torch.randn(x0.shape, generator=g).to(dev))


def probe(model, inputs, s, max_pairs: int = 512, max_items: int = 128) -> tuple:
    """(seconds per (item, noise) loss in the loss matrices, seconds per item of an unlearning step),
    measured here at the batch sizes the settings use (capped at `max_pairs` / `max_items`: per-item
    costs fall with the batch, so a small probe would overestimate)."""
    predict, sync = model.predictor(), torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    n_eval = max(1, min(s.eval_batch_size, max_pairs))
    ac, x0, cond, t, eps = _batch(model, inputs, n_eval)

    def forward():
        with torch.inference_mode():
            per_item_loss(predict, ac, model.prediction_type, x0, cond, t, eps)
        sync()
    f = _timed(forward)
    n_train = max(2, min(2 * s.batch_size, max_items))
    ac, x0, cond, t, eps = _batch(model, inputs, n_train)

    def step():
        per_item_loss(predict, ac, model.prediction_type, x0, cond, t, eps).mean().backward()
        sync()
    with torch.enable_grad():
        b = _timed(step)
    model.unet.zero_grad(set_to_none=True)
    return f / n_eval, 1.15 * b / n_train     # 1.15: the optimizer step and the batch's noise draws


def estimate(attributor, s) -> Estimate:
    """The Estimate of one attribution with settings `s` by `attributor` on this machine."""
    key = (s.eval_batch_size, s.batch_size)
    rates = attributor.__dict__.setdefault("_probe", {})
    if key not in rates:
        rates[key] = probe(attributor.model, attributor.inputs(), s)
    per_pair, per_item = rates[key]
    N, K = len(attributor.data), s.noises
    cached = attributor.cached_parts(s)
    screened = s.screen_noises and s.screen_noises < K and s.screen_keep < N
    lu_pairs = N * s.screen_noises + s.screen_keep * (K - s.screen_noises) if screened else N * K
    step = 2 * s.batch_size * per_item
    stages = {"original_losses": (0.0, 0.0) if cached["original_losses"] else (N * K * per_pair,) * 2,
              "null_loss": (0.0, 0.0) if cached["null_loss"] else (s.null_batches * s.null_batch_size * per_pair,) * 2,
              "unlearning": tuple(f * s.max_steps * step for f in STEPS_SEEN),
              "unlearned_losses": (lu_pairs * per_pair,) * 2}
    dev = attributor.model.device
    return Estimate(stages=stages, cached=cached,
                    device=f"{dev}" + (f" ({torch.get_num_threads()} threads)" if dev.type == "cpu" else ""))
