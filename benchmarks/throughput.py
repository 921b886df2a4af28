"""How close the scoring loop runs to the model's peak forward rate, and the unlearning step to a
bare forward+backward of the same batch — measured in one run, on this machine.

- peak: (item, noise) forwards per second of the bare UNet under inference_mode at the best of
  several batch sizes (inputs prepared beforehand, nothing else in the loop);
- stage: the rate the L_o/L_u loss loop (mucs.method.losses.loss_matrix, data conversion and noising
  included) reaches at the settings' eval_batch_size; ratio = stage / peak;
- unlearning: seconds per step of mucs.method.unlearn against one bare forward+backward+AdamW step on the
  same 2·B items.
At N = 1,000 (the embedded set) and at a larger synthetic N (images drawn from the embedded set with
noise, labels cycled), default 50,000.
- variants (--precision bf16, --memory-format channels_last, --compile inductor): the loss matrices of one
  query with that machine choice against the plain fp32 ones (rate after the compiling first call,
  largest relative difference, top-10 agreement).
Usage: python benchmarks/throughput.py [--large 50000] [--out benchmarks/results/throughput.json]
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs import Attributor, load_dataset, load_model  # noqa: E402
from mucs.cache import atomic_write  # noqa: E402
from mucs.sources.data import TrainingSet  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL, settings_for  # noqa: E402
from mucs.method.losses import loss_matrix  # noqa: E402
from mucs.sources.models import alphas_cumprod, per_item_loss  # noqa: E402
from mucs.method.unlearn import unlearn  # noqa: E402


@torch.inference_mode()
def peak_rate(model, batches=(128, 256, 512, 1024), seconds=3.0) -> tuple:
    """Best forwards/s of the bare UNet over `batches` (each timed for about `seconds`)."""
    dev, C, S = model.device, model.channels, model.size
    best = (0.0, None)
    for b in batches:
        x = torch.randn(b, C, S, S, device=dev)
        t = torch.randint(0, 1000, (b,), device=dev)
        y = torch.randint(0, model.num_classes, (b,), device=dev) if model.num_classes else None
        cond = model.label_cond(y)
        model.predict(model.unet, x, t, cond)            # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model.predict(model.unet, x, t, cond)
            n += b
        rate = n / (time.perf_counter() - t0)
        print(f"  bare forward, batch {b:5d}: {rate:8.0f} forwards/s", flush=True)
        best = max(best, (rate, b))
    return best


def stage_rate(model, data, att, s) -> float:
    ns = att.noise_set(s)
    t0 = time.perf_counter()
    loss_matrix(model.unet, model, data, ns, s.eval_batch_size)
    return len(data) * len(ns) / (time.perf_counter() - t0)


def variant_check(model, data, att, s, changes: dict, k: int = 10) -> dict:
    """One query (training item 7) unlearned once; its L_o and L_u computed plainly and with the settings
    `changes` (precision, memory_format, compile): the loss-stage rate of each, measured after a first
    call that compiles (its seconds are reported apart), the largest relative difference of the
    matrices and the top-k agreement of the two scorings."""
    from mucs.method.overlap import overlap
    from mucs.method.unlearn import skew, top_k
    ns = att.noise_set(s)
    q, y = data.tensor([7])[0], None if data.labels is None else int(data.labels[7])
    u = unlearn(model, data, q, y, 1.0, s.replace(max_steps=10, tol=0.0))
    plain = dict(precision="fp32", memory_format="contiguous", compile="off")
    out = {}
    for name, kw in (("plain", plain), ("variant", dict(plain, **changes))):
        first = {}
        for which, unet in (("L_o", model.unet), ("L_u", u.unet)):       # first calls: compile, warm up
            t0 = time.perf_counter()
            loss_matrix(unet, model, data, ns, s.eval_batch_size, **kw)
            first[which] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lo = loss_matrix(model.unet, model, data, ns, s.eval_batch_size, **kw)
        lu = loss_matrix(u.unet, model, data, ns, s.eval_batch_size, **kw)
        out[name] = dict(rate=2 * len(data) * len(ns) / (time.perf_counter() - t0), first_call_seconds=first,
                         top=top_k(skew(lu, lo), k), lo=lo, lu=lu)
    agree = overlap(out["plain"]["top"], out["variant"]["top"])
    diff = max(float(np.abs(out["variant"][m] - out["plain"][m]).max() / np.abs(out["plain"][m]).max()) for m in ("lo", "lu"))
    label = ", ".join(f"{k}={v}" for k, v in changes.items())
    print(f"{label}: loss matrices {out['variant']['rate']:.0f} forwards/s against plain fp32 {out['plain']['rate']:.0f} "
          f"(first calls L_o {out['variant']['first_call_seconds']['L_o']:.1f} s, L_u "
          f"{out['variant']['first_call_seconds']['L_u']:.1f} s); largest relative difference {diff:.1e}; "
          f"top-{k} agreement {agree:.2f} (one query, 10 unlearning steps)", flush=True)
    return dict(changes=changes, rate=out["variant"]["rate"], plain_rate=out["plain"]["rate"],
                speedup=out["variant"]["rate"] / out["plain"]["rate"], first_call_seconds=out["variant"]["first_call_seconds"],
                max_relative_difference=diff, top_agreement=agree)


def bare_step_seconds(model, data, B, steps=10) -> float:
    """One forward+backward+AdamW step on 2·B items (the forget and retain batches together)."""
    import copy
    unet = copy.deepcopy(model.unet).train(False)
    opt = torch.optim.AdamW([p for p in unet.parameters()], lr=1e-5)
    ac = alphas_cumprod(model)
    idx = np.arange(2 * B) % len(data)
    x0, y = data.tensor(idx), data.label_tensor(idx)
    t = torch.randint(0, 1000, (2 * B,))
    eps = torch.randn_like(x0)
    predict, cond = model.predictor(unet), model.label_cond(y)
    per_item_loss(predict, ac, model.prediction_type, x0, cond, t, eps).mean().backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        per_item_loss(predict, ac, model.prediction_type, x0, cond, t, eps).mean().backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def synthetic(data, n, seed=0) -> TrainingSet:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), n)
    noise = rng.integers(-8, 9, (n, *data.images.shape[1:]))
    images = np.clip(data.images[idx].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    labels = None if data.labels is None else (np.arange(n) % data.num_classes).astype(np.int64)
    return TrainingSet(images=images, labels=labels, class_names=data.class_names, source=f"synthetic-{n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--large", type=int, default=50_000, help="synthetic training-set size (0: skip)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--precision", default=None, choices=["bf16"],
                    help="also compare the loss matrices in this precision with fp32 (rate and top-10 agreement)")
    ap.add_argument("--memory-format", default=None, choices=["channels_last"],
                    help="also compare the loss matrices with channels-last tensors with the plain ones")
    ap.add_argument("--compile", default=None, choices=["inductor", "aot_eager"],
                    help="also compare the loss matrices through torch.compile (this backend) with the plain ones")
    ap.add_argument("--unlearning-only", action="store_true",
                    help="measure only the unlearning step; with --out, update that entry of an existing file")
    a = ap.parse_args()
    model, data = load_model(a.model), load_dataset(a.data)
    s = settings_for(a.model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {model.device}; "
          f"K={s.noises}, eval_batch_size={s.eval_batch_size}, B={s.batch_size}")
    if a.unlearning_only:
        out = json.load(open(a.out)) if a.out and os.path.exists(a.out) else {}
    else:
        peak, best_b = peak_rate(model)
        out = dict(device=str(model.device), torch_threads=torch.get_num_threads(), peak_forwards_per_s=peak,
                   peak_batch=best_b, date=time.strftime("%Y-%m-%d"), sizes={})
    for name, d in ([] if a.unlearning_only else
                    [("N=1000", data)] + ([(f"N={a.large}", synthetic(data, a.large))] if a.large else [])):
        att = Attributor(model, d, s, cache_dir=os.path.join("/tmp", "mucs-throughput-cache"))
        rate = stage_rate(model, d, att, s)
        out["sizes"][name] = dict(stage_forwards_per_s=rate, ratio=rate / peak, seconds=len(d) * s.noises / rate)
        print(f"{name}: loss stage {rate:.0f} forwards/s = {rate / peak:.2f} of peak "
              f"({len(d) * s.noises / rate:.1f} s for {len(d)}x{s.noises})", flush=True)
    checks = [dict(precision=a.precision)] if a.precision else []
    checks += [dict(memory_format=a.memory_format)] if a.memory_format else []
    checks += [dict(compile=a.compile)] if a.compile else []
    if checks:
        att = Attributor(model, data, s, cache_dir=os.path.join("/tmp", "mucs-throughput-cache"))
        out["variants"] = {", ".join(f"{k}={v}" for k, v in c.items()): variant_check(model, data, att, s, c)
                           for c in checks}
    lnull = 1.0
    q, y = data.tensor([7])[0], None if data.labels is None else int(data.labels[7])
    unlearn(model, data, q, y, lnull, s.replace(max_steps=1, tol=0.0))      # warm-up (first-call allocations)
    t0 = time.perf_counter()
    u = unlearn(model, data, q, y, lnull, s.replace(max_steps=10, tol=0.0))
    step = (time.perf_counter() - t0) / max(1, u.steps)
    bare = bare_step_seconds(model, data, s.batch_size)
    out["unlearning"] = dict(seconds_per_step=step, bare_seconds_per_step=bare, ratio=bare / step,
                             date=time.strftime("%Y-%m-%d"),
                             note="forget and retain batches in one forward (since 2026-12-01); after a warm-up call")
    print(f"unlearning: {step * 1000:.0f} ms per step, bare forward+backward+step of 2x{s.batch_size} items "
          f"{bare * 1000:.0f} ms ({bare / step:.2f} of the bare rate)")
    if a.out:
        atomic_write(a.out, json.dumps(out, indent=1, allow_nan=False).encode())
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
