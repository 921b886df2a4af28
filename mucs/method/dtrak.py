"""D-TRAK and TRAK for diffusion models (Zheng et al., *Intriguing properties of data attribution on
diffusion models*, ICLR 2024), as in their public code (sail-sg/D-TRAK):

- per training item, the gradient of a model-output function f w.r.t. every trainable parameter,
  averaged over S timesteps spaced t = 0, T/S, 2T/S, ... (their "uniform" strategy), with noise fixed
  per (item, timestep); f is D-TRAK's ``mean-squared-l2-norm`` (mean over pixels of the denoiser
  output squared, the one they recommend) or the diffusion loss (``loss``: TRAK);
- a random projection of that gradient to d dimensions (TRAK's normal projector, `traker`), Φ (N×d);
- the query's features φ(q) with the *same* output function, timesteps and projector;
- scores φ(q)ᵀ (ΦᵀΦ + λI)⁻¹ Φᵀ, no normalisation (higher = more influential).

Φ does not depend on the query, so it is computed once per (model, data, f, S, d, seed) and cached on
disk (memory-mapped). So is the back-projection M = Φ·P (N × parameters), which gives Φ·φ(q) = M·g(q)
without drawing the d × p projection matrix again for every query (the costly part on a CPU); when M
would be too large it is skipped and φ(q) is projected as usual. Both forms of the kernel solve are
exact (the push-through identity): (ΦΦᵀ + λI)⁻¹ z when N ≤ d, else (z − Φ(ΦᵀΦ + λI)⁻¹Φᵀz)/λ.
"""
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Optional

import numpy as np
import torch

from ..cache import cache_key, move_dir_into_place, staging_dir
from ..errors import MucsError
from ..sources.models import alphas_cumprod

log = logging.getLogger("mucs")
OUTPUTS = {"dtrak": "mean-squared-l2-norm", "trak": "loss"}
BACKPROJECTION_BYTES = 4 << 30   # M = Φ·P is kept (on disk) up to this size; beyond, queries are projected


@dataclass(frozen=True)
class DTrakOptions:
    """D-TRAK / TRAK settings, defaults from the authors' code and README (CIFAR-2 commands:
    ``uniform 10 32768``; λ = 5e6, the value of their released counterfactual scores, the best of
    their λ grid by LDS)."""
    timesteps: int = 10          # S
    dim: int = 32768             # d, the projection dimension (0: no projection, Φ = the gradients themselves)
    lam: float = 5e6             # λ of (ΦᵀΦ + λI)⁻¹
    seed: int = 42               # the projector's seed (theirs) and of the fixed noise
    proj_type: str = "normal"    # normal | rademacher (TRAK's projector types)
    block: int = 128             # projector columns drawn at a time (part of which matrix is drawn)
    batch: int = 16              # items per vmap'd gradient chunk (memory; not result-changing)

    def validate(self) -> "DTrakOptions":
        checks = [(self.timesteps >= 1, "timesteps S must be ≥ 1"), (self.dim >= 0, "dim d must be ≥ 0 (0: no projection)"),
                  (self.lam >= 0 and np.isfinite(self.lam), "λ must be a finite number ≥ 0"),
                  (self.proj_type in ("normal", "rademacher"), "proj_type must be normal or rademacher"),
                  (self.block >= 1 and self.batch >= 1, "block and batch must be ≥ 1")]
        for ok, msg in checks:
            if not ok:
                raise MucsError(f"D-TRAK option: {msg}")
        return self

    def key(self) -> dict:
        """What the cached features depend on (λ and batch do not)."""
        return dict(timesteps=self.timesteps, dim=self.dim, seed=self.seed, proj_type=self.proj_type, block=self.block)


def options_from(d: Optional[dict], cls=DTrakOptions):
    """Options from a dict (unknown keys are one clear error)."""
    d = dict(d or {})
    names = {f.name for f in fields(cls)}
    bad = sorted(set(d) - names)
    if bad:
        raise MucsError(f"unknown option(s) {', '.join(bad)} for {cls.__name__}; known: {', '.join(sorted(names))}")
    types: dict = {f.name: type(f.default) for f in fields(cls)}
    try:
        return replace(cls(), **{k: types[k](v) for k, v in d.items()}).validate()
    except (TypeError, ValueError) as e:
        raise MucsError(f"{cls.__name__}: {e}") from e


# --- the model call and the output functions -------------------------------------------------------
def predict(unet, params, buffers, x_t, t, y):
    """The denoiser output for a batch, with the parameters given as tensors (torch.func). The one
    place D-TRAK and AbU call the model."""
    kw = {} if y is None else dict(class_labels=y)
    return torch.func.functional_call(unet, (params, buffers), (x_t, t), kw).sample


def _target(prediction_type, a, x0, eps):
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    return x0


def output_fn(unet, ac, prediction_type: str, output: str):
    """f(params, buffers, x0, t, y, eps) for ONE item: D-TRAK's mean squared output, or the loss."""
    if output not in ("mean-squared-l2-norm", "loss"):
        raise MucsError(f"unknown output function {output!r}")

    def f(params, buffers, x0, t, y, eps):
        a = ac.gather(0, t.reshape(1)).reshape(())   # (ac[t] would call .item() under vmap)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = predict(unet, params, buffers, x_t[None], t[None], None if y is None else y[None])
        if output == "mean-squared-l2-norm":
            return (pred.float() ** 2).mean()
        return ((_target(prediction_type, a, x0, eps) - pred.float()) ** 2).mean()
    return f


def trainable(unet) -> tuple:
    """(params, buffers) as detached dicts: every parameter (D-TRAK differentiates all of them)."""
    params = {n: p.detach() for n, p in unet.named_parameters()}
    buffers = {n: b.detach() for n, b in unet.named_buffers()}
    return params, buffers


def per_sample_grads(fn, params, buffers, x0, t, y, eps, names=None) -> torch.Tensor:
    """(n, p) flattened per-item gradients of `fn` (torch.func: vmap over the items of grad)."""
    g = torch.func.vmap(torch.func.grad(fn), in_dims=(None, None, 0, 0, None if y is None else 0, 0))(
        params, buffers, x0, t, y, eps)
    names = list(params) if names is None else names
    return torch.cat([g[n].reshape(len(x0), -1) for n in names], 1)


def spaced_timesteps(T: int, S: int) -> torch.Tensor:
    """D-TRAK's "uniform" strategy: range(0, T, T // S) (S values when S divides T)."""
    step = max(1, T // S)
    return torch.arange(0, T, step, dtype=torch.long)[:S]


def fixed_noise(seed: int, key, n: int, shape) -> torch.Tensor:
    """n image-shaped noises fixed by (seed, key): the same for an item whatever it is batched with."""
    h = int(hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()[:15], 16)
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(h))


def item_gradients(model, x0: torch.Tensor, y, keys, S: int, seed: int, output: str, unet=None) -> torch.Tensor:
    """(n, p) gradients of the output function averaged over the S spaced timesteps, noise fixed
    per (key, timestep); `keys` name the items (training index, or 'query')."""
    unet = model.unet if unet is None else unet
    ac = alphas_cumprod(model).to(x0.device)
    ts = spaced_timesteps(len(ac), S).to(x0.device)
    fn = output_fn(unet, ac, model.prediction_type, output)
    params, buffers = trainable(unet)
    shape = tuple(x0.shape[1:])
    eps = torch.stack([fixed_noise(seed, k, len(ts), shape) for k in keys]).to(x0.device)   # (n, S, ...)
    total: Optional[torch.Tensor] = None
    for j, t in enumerate(ts):
        g = per_sample_grads(fn, params, buffers, x0, t.expand(len(x0)), y, eps[:, j])
        total = g if total is None else total + g
    assert total is not None    # S ≥ 1 timesteps (validated)
    return total / len(ts)


# --- the projector (traker's BasicProjector, drawn block by block) ----------------------------------
def projector(p: int, o: DTrakOptions):
    """TRAK's CPU projector (`traker`): a d × p Gaussian (or Rademacher) matrix drawn in blocks of
    columns from per-block seeds, so any block can be drawn again on its own."""
    from trak.projectors import BasicProjector, ProjectionType
    kind = ProjectionType.normal if o.proj_type == "normal" else ProjectionType.rademacher
    return BasicProjector(grad_dim=p, proj_dim=o.dim, seed=o.seed, proj_type=kind, device=torch.device("cpu"),
                          block_size=o.block)


def project_blocks(proj, G: np.ndarray, phi: np.ndarray, back: Optional[np.ndarray], rows: int = 256) -> None:
    """phi[:] = G·Pᵀ (TRAK's projection) and, when `back` is given, back[:] = phi·P, drawing each block
    of P once; G, phi and back may be memory-mapped."""
    N = len(G)
    if back is not None:
        back[:] = 0
    for b, state in enumerate(proj.generator_states):
        proj.generate_sketch_matrix(state)
        st, ed = b * proj.block_size, min((b + 1) * proj.block_size, proj.proj_dim)
        P = proj.proj_matrix[:, : ed - st]                       # (p, block)
        for r in range(0, N, rows):
            g = torch.from_numpy(np.asarray(G[r:r + rows], np.float32))
            part = g @ P
            phi[r:r + rows, st:ed] = part.numpy()
            if back is not None:
                back[r:r + rows] += (part @ P.T).numpy()


# --- features: computed once, cached on disk ---------------------------------------------------------
@dataclass
class Features:
    phi: np.ndarray                  # (N, d) Φ, memory-mapped when read from the cache
    back: Optional[np.ndarray]       # (N, p) M = Φ·P, or None (then queries are projected)
    options: DTrakOptions
    output: str
    seconds: float
    cached: bool
    _solvers: Optional[dict] = None

    def kernel_scale(self) -> float:
        """Mean ‖φ_i‖² (the diagonal of ΦΦᵀ): where λ sits against the kernel."""
        return float(np.mean(np.einsum("ij,ij->i", self.phi, self.phi, dtype=np.float64)))


def features_key(model, data, output: str, o: DTrakOptions) -> str:
    return cache_key(kind="dtrak_features", model=model.fingerprint(), data=data.fingerprint(), output=output,
                     prediction=model.prediction_type, **o.key())


def _read_cached(folder: str, key: str, N: int, d: int):
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        if meta.get("key") != key:
            return None
        phi = np.load(os.path.join(folder, "phi.npy"), mmap_mode="r")
        back = np.load(os.path.join(folder, "back.npy"), mmap_mode="r") if meta.get("back") else None
    except (OSError, ValueError):
        return None
    if phi.shape != (N, d) or (back is not None and back.shape[0] != N) or not np.isfinite(meta.get("seconds", 0)):
        return None
    return phi, back, float(meta.get("seconds", 0.0))


def training_features(model, data, output: str, o: DTrakOptions, cache_dir: str, report=None) -> Features:
    """Φ (and M) of every training item: from the cache folder `cache_dir`, else computed and cached
    atomically (a folder dtrak-<key>/ with phi.npy, back.npy and meta.json, read memory-mapped)."""
    o = o.validate()
    key = features_key(model, data, output, o)
    folder = os.path.join(cache_dir, f"dtrak-{key}")
    N = len(data)
    p = sum(v.numel() for v in model.unet.parameters())
    d = o.dim or p
    hit = _read_cached(folder, key, N, d)
    if hit is not None:
        log.info("dtrak features: cache hit %s", folder)
        return Features(hit[0], hit[1], o, output, hit[2], True)
    log.info("dtrak features: cache miss (key %s): computing them", key)
    t0 = time.perf_counter()
    os.makedirs(cache_dir, exist_ok=True)
    tmp = staging_dir(folder)
    try:
        G = np.lib.format.open_memmap(os.path.join(tmp, "grads.npy"), "w+", np.float32, (N, p))
        dev = model.device
        for s in range(0, N, o.batch):
            idx = np.arange(s, min(N, s + o.batch))
            y = data.label_tensor(idx)
            y = y.to(dev) if (y is not None and model.num_classes) else None
            G[idx] = item_gradients(model, data.tensor(idx).to(dev), y, [int(i) for i in idx], o.timesteps, o.seed,
                                    output).cpu().numpy()
            if report is not None:
                report("gradients", (s + len(idx)) / N)
        if o.dim:
            phi = np.lib.format.open_memmap(os.path.join(tmp, "phi.npy"), "w+", np.float32, (N, o.dim))
            keep_back = N * p * 4 <= BACKPROJECTION_BYTES
            back = np.lib.format.open_memmap(os.path.join(tmp, "back.npy"), "w+", np.float32, (N, p)) if keep_back else None
            project_blocks(projector(p, o), G, phi, back)
        else:                  # no projection: Φ is G itself
            G.flush()
            phi, back, keep_back = G, None, False
            os.rename(os.path.join(tmp, "grads.npy"), os.path.join(tmp, "phi.npy"))
        if not np.isfinite(phi).all() or (back is not None and not np.isfinite(back).all()):
            raise MucsError("D-TRAK features are not finite (the model's gradients overflow)")
        phi.flush()
        if back is not None:
            back.flush()
        del G
        if o.dim:
            os.unlink(os.path.join(tmp, "grads.npy"))
        seconds = time.perf_counter() - t0
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(dict(key=key, N=N, d=d, p=p, back=keep_back, seconds=seconds, output=output,
                           options=asdict(o)), f)
        del phi, back
        move_dir_into_place(tmp, folder)
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    hit = _read_cached(folder, key, N, d)
    if hit is None:
        raise MucsError(f"D-TRAK features written to {folder} cannot be read back")
    return Features(hit[0], hit[1], o, output, seconds, False)


class KernelSolver:
    """s = (ΦΦᵀ + λI)⁻¹ z, through the smaller of the two Gram matrices (exact either way). `gram`: that
    Gram matrix without λ, when already computed (a λ grid then costs one factorisation per λ)."""

    def __init__(self, phi: np.ndarray, lam: float, gram: Optional[np.ndarray] = None):
        N, d = phi.shape
        self.lam, self.phi = float(lam), phi
        self.small_n = N <= d
        gram = (gram_matrix(phi) if gram is None else gram).copy()
        gram[np.diag_indices_from(gram)] += self.lam
        if self.lam == 0:   # λ = 0: a pseudo-inverse instead of an error on a singular Gram matrix
            self.inv = np.linalg.pinv(gram)
        else:
            self.cho = np.linalg.cholesky(gram)

    def _solve(self, v):
        if self.lam == 0:
            return self.inv @ v
        return np.linalg.solve(self.cho.T, np.linalg.solve(self.cho, v))

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float64)
        if self.small_n:
            return self._solve(z)
        phi = self.phi
        u = np.zeros(phi.shape[1])
        for r in range(0, len(phi), 4096):
            u += np.asarray(phi[r:r + 4096], np.float64).T @ z[r:r + 4096]
        w = self._solve(u)
        return (z - np.concatenate([np.asarray(phi[r:r + 4096], np.float64) @ w
                                    for r in range(0, len(phi), 4096)])) / self.lam


def gram_matrix(phi: np.ndarray) -> np.ndarray:
    """ΦΦᵀ (N ≤ d) or ΦᵀΦ (N > d) in float64, read in row blocks (Φ may be memory-mapped)."""
    N, d = phi.shape
    small_n = N <= d
    gram = np.zeros((N, N) if small_n else (d, d), np.float64)
    for r in range(0, N, 4096):
        blk = np.asarray(phi[r:r + 4096], np.float64)
        if small_n:
            for c in range(0, N, 4096):
                gram[r:r + len(blk), c:c + 4096] = blk @ np.asarray(phi[c:c + 4096], np.float64).T
        else:
            gram += blk.T @ blk
    return gram


def query_kernel_input(model, feats: Features, x: torch.Tensor, label) -> np.ndarray:
    """z = Φ·φ(q) (N,) of the query image `x` (C, H, W) in [-1, 1]: its gradient with the same output
    function, timesteps and noise seed, projected. The costly, λ-free part of a query's scores."""
    o = feats.options
    dev = model.device
    y = torch.tensor([int(label)], device=dev) if (label is not None and model.num_classes) else None
    g = item_gradients(model, x[None].to(dev), y, ["query"], o.timesteps, o.seed, feats.output)[0].cpu().numpy()
    if o.dim == 0:
        return np.concatenate([np.asarray(feats.phi[r:r + 4096], np.float64) @ g for r in range(0, len(feats.phi), 4096)])
    if feats.back is not None:
        return np.concatenate([np.asarray(feats.back[r:r + 2048], np.float64) @ g for r in range(0, len(feats.back), 2048)])
    phi_q = projector(len(g), o).project(torch.from_numpy(g[None]), model_id=0)[0].numpy().astype(np.float64)
    return np.concatenate([np.asarray(feats.phi[r:r + 4096], np.float64) @ phi_q for r in range(0, len(feats.phi), 4096)])


def solve_scores(feats: Features, z: np.ndarray, lam: float) -> np.ndarray:
    """(N,) scores φ(q)ᵀ(ΦᵀΦ + λI)⁻¹Φᵀ from z = Φ·φ(q): only this depends on λ (the Gram matrix is built
    once per features, factorised once per λ)."""
    lam = float(lam)
    solvers = feats._solvers = feats._solvers or {}
    if lam not in solvers:
        if "gram" not in solvers:
            solvers["gram"] = gram_matrix(feats.phi)
        solvers[lam] = KernelSolver(feats.phi, lam, solvers["gram"])
    s = solvers[lam](z)
    if not np.isfinite(s).all():
        raise MucsError("D-TRAK scores are not finite")
    return s


def query_scores(model, feats: Features, x: torch.Tensor, label, lam: Optional[float] = None) -> np.ndarray:
    """(N,) D-TRAK / TRAK scores of the query image `x` (C, H, W) in [-1, 1]: φ(q)ᵀ (ΦᵀΦ + λI)⁻¹ Φᵀ
    (λ: the options' unless given)."""
    z = query_kernel_input(model, feats, x, label)
    return solve_scores(feats, z, feats.options.lam if lam is None else lam)
