"""Why this image: for one training item of a run, its losses at each of the K noise levels (the
original model's L_o and the unlearned model's L_u, over σ), its skew against every other item's,
its rank under MUCS and under the nearest-neighbour baselines, and its nearest training images.

A run stores only the mean L_o and L_u per item, not the per-noise matrices. Here they are
recomputed for the few items asked about, on the run's own noise set:
- L_o rows: the original model at the K levels (K forward passes per item; cheap);
- L_u rows: need the unlearned model, which a stored run does not keep. `replay_unlearning` re-runs
  the run's unlearning (same query, label, settings, seed, learning rate and L_null: deterministic
  on a given machine and torch build) at the cost of the run's unlearning stage; the explorer keeps
  the last replayed models in memory. Without it the per-noise L_u is not shown, only its stored mean.
Every recomputed row is checked against the stored means, and the result says whether it matched.
An item that a screened run (screen_noises) did not keep was scored on the screening levels only: its
stored means and skew are over those levels, it is checked on them, and the result says so plainly;
with the unlearned model at hand its skew over all K levels is computed here as well."""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import MucsError
from ..method.losses import loss_matrix
from ..method.unlearn import skew
from ..settings import Settings

MATCH_RTOL = 2e-3       # recomputed row means agree with the stored means to this relative tolerance
FRESH_NOISE_OFFSET = 1_000_003   # the fresh-noise ablation's second noise set (mucs.method.attribute)


def run_settings(att, base: Optional[Settings] = None) -> Settings:
    """The Settings a stored run was made with. Runs made before the noise range existed used the
    scheduler's whole σ range: a range wider than any scheduler's reproduces it (it is clipped)."""
    d = dict(att.settings or {})
    if "sigma_min" not in d:
        d.update(sigma_min=1e-12, sigma_max=1e12)
    s = (base or Settings()).replace(**{k: v for k, v in d.items() if v is not None})
    s.lr = d.get("lr")   # type: ignore[assignment]  # None: the model's training lr ÷ lr_factor
    return s


def loss_rows(unet, model, data, noise_set, indices, s: Settings) -> np.ndarray:
    """(len(indices), K) losses of `unet` for the given items on `noise_set` (exactly the
    computation of the run's L_o / L_u matrices, restricted to these rows)."""
    from ..sources.inputs import model_inputs
    return loss_matrix(unet, model, model_inputs(model, data).subset(indices), noise_set, s.eval_batch_size, None, "why",
                       s.loss_weighting, s.sigma_data, precision=s.precision, memory_format=s.memory_format,
                       compile=s.compile)


def _mucs_run(att) -> None:
    """'Why' reads MUCS's L_o, L_u and L_null: a run of D-TRAK, TRAK, AbU or a baseline has no L_null."""
    if att.loss_null is None:
        raise MucsError(f"'why' explains a MUCS run; this run is {(att.info or {}).get('method', 'another method')}'s "
                        f"(no L_null): use Methods side by side to compare it")


def replay_unlearning(model, data, att, s: Settings, progress=None, cancel=None):
    """The run's unlearned UNet, recomputed: the same query pixels, label, settings, seed, learning
    rate and L_null. Refuses a run made with another model."""
    from ..sources.data import to_model_range
    from ..progress import Reporter
    from ..method.unlearn import unlearn
    _mucs_run(att)
    fp = (att.info or {}).get("model_fingerprint")
    if fp and fp != model.fingerprint():
        raise MucsError("this run was made with another model: its unlearning cannot be replayed here")
    if att.query_image is None:
        raise MucsError("this run has no stored query image: its unlearning cannot be replayed")
    lr = (att.info or {}).get("unlearning_lr")
    s = s.replace(lr=lr) if lr else s
    x0 = model.encode_images(to_model_range(att.query_image)[None])[0]
    cond = model.condition(att.query.get("label"), att.query.get("prompt"))
    u = unlearn(model, data, x0, cond, float(att.loss_null), s, Reporter(progress, cancel))
    return u.unet, dict(steps=u.steps, converged=u.converged, same_steps=u.steps == att.steps)


@dataclass
class Why:
    """Everything the 'why this image' view shows for one training item."""
    index: int
    label: Optional[int]
    class_name: str
    score: float
    rank: int                          # 1-based rank under MUCS
    n: int                             # training items
    percentile: float                  # share of items with a lower score
    sigmas: np.ndarray                 # (K,) σ of each level (the timestep's own σ)
    timesteps: np.ndarray              # (K,)
    loss_original: np.ndarray          # (K,) L_o at each level
    loss_unlearned: Optional[np.ndarray]   # (K,) L_u at each level, None when the unlearned model is absent
    mean_original: float               # stored means (what the score was computed from)
    mean_unlearned: float
    loss_null: float
    ranks: dict = field(default_factory=dict)        # method -> 1-based rank
    neighbours: list = field(default_factory=list)   # [(index, squared distance)], nearest first
    notes: list = field(default_factory=list)
    checks: dict = field(default_factory=dict)       # 'L_o' / 'L_u': recomputed mean matches the stored one
    screening_levels: Optional[list] = None   # a screened-out item: the levels it was scored on (column indices)
    full_skew: Optional[float] = None         # a screened-out item's skew over all K, computed here (needs L_u)

    @property
    def per_noise_skew(self) -> Optional[np.ndarray]:
        if self.loss_unlearned is None:
            return None
        lo, lu = self.loss_original.astype(np.float64), self.loss_unlearned.astype(np.float64)
        return (lu - lo) / (lu + lo + 1e-3)

    def _levels(self) -> str:
        if self.screening_levels is None:
            return f"K = {len(self.sigmas)} noise levels"
        return f"{len(self.screening_levels)} screening levels"

    def summary(self) -> str:
        """Markdown: the item's score, rank and where it sits, ranks under other methods, checks, notes."""
        cls = f" ({self.class_name})" if self.class_name else ""
        lines = [f"**Training image {self.index}{cls}**: skew **{self.score:.4f}**, rank **{self.rank}** of {self.n} "
                 f"under MUCS (higher than {self.percentile:.1%} of the training images).",
                 f"Mean loss over the {self._levels()}: L_o = {self.mean_original:.4g} before, "
                 f"L_u = {self.mean_unlearned:.4g} after unlearning the query (L_null, an untrained model's loss: "
                 f"{self.loss_null:.4g})."]
        if self.ranks:
            from .compare import LABELS
            lines.append("Rank under other methods: " + ", ".join(f"{LABELS.get(m, m)} **{r}**"
                                                                 for m, r in self.ranks.items()) + ".")
        sk = self.per_noise_skew
        if sk is not None and self.loss_unlearned is not None:
            k = int(np.argmax(sk))
            lines.append(f"The rise is largest at σ ≈ {self.sigmas[k]:.3g} (timestep {int(self.timesteps[k])}): "
                         f"L_o {self.loss_original[k]:.3g} → L_u {self.loss_unlearned[k]:.3g}.")
        for name, ok in self.checks.items():
            lines.append(f"Per-noise {name} recomputed here: its mean {'matches' if ok else '**does not match**'} "
                         "the stored run" + ("." if ok else " (the values are indicative only)."))
        lines += self.notes
        return "  \n".join(lines)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= MATCH_RTOL * max(abs(a), abs(b), 1e-6)


def screening_levels(att) -> Optional[list]:
    """The noise levels (column indices) of a screened run's first stage; None for a run scored in full."""
    sc = (att.info or {}).get("screening")
    return [int(c) for c in sc["noises"]] if isinstance(sc, dict) and sc.get("noises") else None


def _screened_out(att, i: int, lo: np.ndarray) -> Optional[list]:
    """The screening levels when item `i` of a screened run was not kept (scored on those levels only),
    else None. A run does not list its kept items; the stored mean L_o tells: a kept item's is over all
    K levels, a screened-out item's over the screening levels (the recomputed row gives both)."""
    cols = screening_levels(att)
    stored = float(att.loss_original[i])
    if cols is None or _close(float(lo.mean()), stored) or not _close(float(lo[cols].mean()), stored):
        return None
    return cols


def _screened_note(att, why_cols: list, K: int, score: float, full: Optional[float]) -> str:
    """What a screened-out item's numbers are, said plainly, and its skew over all K when computed."""
    kept = att.info["screening"].get("kept", "best")
    text = (f"**Screened out at the first stage.** This run scored every training image on {len(why_cols)} of the "
            f"K = {K} noise levels first, then only the {kept} with the highest screening skew on all K; this image "
            f"was not among them. Its skew {score:.4f} is its screening score: it and the mean losses above are over "
            f"those {len(why_cols)} levels, and it could not enter the run's top-k.")
    if full is None:
        return text + " Replaying the unlearning also computes its skew over all K levels."
    text += f" Its skew over all K levels, computed here from the replayed unlearned model: **{full:.4f}**"
    top = np.asarray(att.top, np.int64)
    if len(top) and not (att.info or {}).get("fragile_correction"):
        low = float(np.min(np.asarray(att.scores, np.float64)[top]))
        text += (f" (the run's top-k starts at {low:.4f}: scored in full, it would "
                 f"{'have entered it' if full > low else 'not have entered it'})")
    return text + "."


def explain(model, data, attributor, att, index: int, unlearned_unet=None, rank_scores: Optional[dict] = None,
            neighbour_index=None, k_neighbours: int = 6, class_name=lambda y: "") -> Why:
    """The 'why' of training item `index` in run `att`. `unlearned_unet` (the run's unlearned model,
    kept or replayed) gives the per-noise L_u; `rank_scores` ({method: scores}) the other methods'
    ranks; `neighbour_index` (a pixel NeighbourIndex) the nearest training images."""
    from .compare import ranks_of
    _mucs_run(att)
    n = len(att.scores)
    try:
        i = int(index)
    except (TypeError, ValueError):
        raise MucsError(f"training index must be an integer, got {index!r}") from None
    if not 0 <= i < n:
        raise MucsError(f"training index {i} out of range 0..{n - 1}")
    s = run_settings(att, attributor.settings)
    ns = attributor.noise_set(s)
    inputs = attributor.inputs()     # (a latent model's latents and caption embeddings: encoded once)
    lo = loss_rows(model.unet, model, inputs, ns, [i], s)[0]
    cols = _screened_out(att, i, lo)
    levels = slice(None) if cols is None else cols        # what the stored means were taken over
    checks = {"L_o": _close(float(lo[levels].mean()), float(att.loss_original[i]))}
    notes = []
    lu = full = None
    if unlearned_unet is not None:
        ns_u = attributor.noise_set(s, 0 if s.consistent_noise else FRESH_NOISE_OFFSET)
        lu = loss_rows(unlearned_unet, model, inputs, ns_u, [i], s)[0]
        checks["L_u"] = _close(float(lu[levels].mean()), float(att.loss_unlearned[i]))
        if cols is not None:
            full = float(skew(lu[None], lo[None], s.normalised)[0])
    else:
        notes.append("The per-noise L_u needs the run's unlearned model, which a stored run does not keep: the plot "
                     "shows L_o at each noise level and the stored mean L_u as a dashed line. **Replay the "
                     "unlearning** to see L_u per noise level (it costs about as long as the run's unlearning stage).")
    scores = np.asarray(att.scores, np.float64)
    if cols is not None:
        notes.insert(0, _screened_note(att, cols, len(lo), float(scores[i]), full))
    rank = int(ranks_of(scores)[i])
    label = None if att.labels is None else int(att.labels[i])
    ranks = {}
    for name, sc in (rank_scores or {}).items():
        if name != "mucs":
            ranks[name] = int(ranks_of(sc)[i])
    neighbours = []
    if neighbour_index is not None:
        from ..method.neighbours import pixel_features
        d, idx = neighbour_index.search(pixel_features(data.tensor([i])), k_neighbours + 1)
        neighbours = [(int(j), float(dd)) for dd, j in zip(d[0], idx[0]) if int(j) != i][:k_neighbours]
    ts = ns.timestep_sigmas if ns.timestep_sigmas is not None else ns.sigmas
    return Why(index=i, label=label, class_name=class_name(label) if label is not None else "", score=float(scores[i]),
               rank=rank, n=n, percentile=float(np.mean(scores < scores[i])),
               sigmas=np.asarray(ts, np.float64), timesteps=np.asarray(ns.timesteps), loss_original=lo,
               loss_unlearned=lu, mean_original=float(att.loss_original[i]), mean_unlearned=float(att.loss_unlearned[i]),
               loss_null=float(att.loss_null), ranks=ranks, neighbours=neighbours, notes=notes, checks=checks,
               screening_levels=cols, full_skew=full)
