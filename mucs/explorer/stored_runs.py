"""What the Explorer does with a run's result and its stored runs (a mixin of
mucs.explorer.state.Explorer): galleries, neighbours and summary of a result; overlaps of top-k
sets, the history table with each run's main settings, opening, replaying and explaining a run,
methods and runs side by side, and the files a run is downloaded as."""
import math
import os
import tempfile
from typing import Any, Optional

import numpy as np
from PIL import Image

from ..errors import Cancelled, MucsError
from ..method import overlap as ov
from ..method.attribute import Attribution
from ..method.neighbours import NeighbourIndex, pixel_features
from ..sources.data import to_model_range
from ..settings import PAPER_KEYS, Settings
from ..leftovers import owner_tag

KEEP_UNLEARNED = 2      # unlearned UNets kept in memory (the last runs replayed or attributed here)


def upscale(img: np.ndarray, target: int = 128) -> Image.Image:
    """uint8 (H, W, C) -> PIL image enlarged by an integer factor with nearest neighbours (crisp pixels)."""
    a = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    h, w = a.shape[:2]
    f = max(1, int(round(target / max(h, w))))
    return Image.fromarray(np.ascontiguousarray(a)).resize((w * f, h * f), Image.Resampling.NEAREST)


class StoredRuns:
    """The Explorer's methods on stored runs; they use its store, model, data, attributor and locks."""
    # the Explorer's attributes these methods use (declared for the type checker)
    store: Any
    model: Any
    model_path: Any
    data: Any
    text: Any
    settings: Any
    attributor: Any
    class_names: Any
    _unlearned: Any
    _baseline_lock: Any
    _lock: Any
    _neigh: Any
    _ctx: Any
    _downloads: Any

    # --- results -------------------------------------------------------------------------------------
    def class_name(self, label) -> str:
        if label is None:
            return ""
        names = self.class_names
        return names[int(label)] if names and 0 <= int(label) < len(names) else str(label)

    def item_text(self, i, limit: int = 60) -> str:
        """How a training item is named under its image: its class, or (text models) its caption."""
        i = int(i)
        if self.data.captions is not None and (self.text or self.data.labels is None):
            c = self.data.caption(i)
            return f"“{c[:limit - 1]}…”" if len(c) > limit else f"“{c}”"
        return "" if self.data.labels is None else self.class_name(self.data.labels[i])

    def _lab(self, i) -> str:
        t = self.item_text(i)
        return f" {t}" if t else ""

    def top_gallery(self, att: Attribution, target: int = 128) -> list:
        """[(image, caption)] of the top-k training items, best first."""
        out = []
        for rank, i in enumerate(att.top, 1):
            i = int(i)
            out.append((upscale(self.data.images[i], target), f"#{rank} · {i}{self._lab(i)} · {att.scores[i]:.4f}"))
        return out

    def neighbours(self, image: np.ndarray, k: int = 8, target: int = 128) -> list:
        """[(image, caption)] of the k nearest training items in pixel space (for comparison)."""
        d, idx = self.pixel_index().search(pixel_features(to_model_range(image)[None]), k)
        out = []
        for dist, i in zip(d[0], idx[0]):
            i = int(i)
            out.append((upscale(self.data.images[i], target), f"{i}{self._lab(i)} · d²={dist:.3g}"))
        return out

    def check_run(self, att: Attribution) -> None:
        """Refuse a stored run made with another model or training set."""
        fp = att.info.get("data_fingerprint")
        if len(att.scores) != len(self.data) or (fp and fp != self.data.fingerprint()):
            raise MucsError("this run was made with another training set; open it with the matching --data")
        m, q = self.model, att.query_image
        if q is not None and q.shape != (m.size, m.size, m.channels):
            raise MucsError(f"this run's query.png is {'x'.join(map(str, q.shape))}, not the model's "
                            f"{m.size}x{m.size}x{m.channels}: the run was made with another model or edited")

    def summary(self, att: Attribution, run_id: str = "") -> str:
        q = att.query
        cls = (f"class **{q.get('class_name')}** ({q.get('label')})" if q.get("label") is not None else
               f"prompt “{q['prompt']}”" if q.get("prompt") else "no class")
        conv = "; ".join(q.get("conversions") or []) or "none"
        if att.loss_null is None:   # a run of another method (mucs attribute --method dtrak|trak|abu|..)
            times = ", ".join(f"{k.replace('_', ' ')} {v:.1f}s" for k, v in att.stage_times.items())
            return (f"**Run** `{run_id}`: query {q.get('source') or ''}, {cls}; conversions: {conv}.  \n"
                    f"Method **{att.info.get('method')}**: {att.info.get('method_description', '')}.  \n"
                    f"Time: {times}.")
        stop = "converged (L_f reached (1−τ)·L_null)" if att.converged else "**hit the step cap** (not converged)"
        st = att.stage_times
        times = ", ".join(f"{k.replace('_', ' ')} {v:.1f}s" for k, v in st.items())
        s = att.settings
        return (f"**Run** `{run_id}`: query {q.get('source') or ''}, {cls}; conversions: {conv}.  \n"
                f"Unlearning: {att.steps} steps, {stop}; L_null = {att.loss_null:.4g}.  \n"
                f"Settings: K={s.get('noises')}, f={s.get('noise_fraction')}, λ={s.get('lam')}, τ={s.get('tol')}, "
                f"cap={s.get('max_steps')}, top-k={s.get('top_k')}, seed={s.get('seed')}"
                f"{'' if s.get('bounded', True) else ', unbounded'}{'' if s.get('retain', True) else ', no retain'}"
                f"{'' if s.get('consistent_noise', True) else ', fresh noise'}"
                f"{'' if s.get('normalised', True) else ', un-normalised'}; "
                + (f"noise grid σ {s['sigma_min']:g}–{s['sigma_max']:g}" if "sigma_min" in s
                   else "noise grid over the scheduler's full σ range (a run made before the fix)")
                + f"{_levels(att.info.get('noise_levels'))}, training-time noise {s.get('train_noise', 'uniform')}, "
                f"loss weighting {s.get('loss_weighting', 'none')}.  \n"
                f"Time: {times}." + "".join(f"  \n⚠️ {w}" for w in self.warnings(att)))

    def warnings(self, att: Attribution) -> list:
        """Plain-language warnings for a run (tied top-k, saturated class, step cap)."""
        from .diagnostics import warnings
        return warnings(att.scores, att.top, att.labels, att.query.get("label"), att.converged, att.steps)

    # --- overlap --------------------------------------------------------------------------------------
    def overlap(self, run_ids, pairs: int = 2000) -> dict:
        """Overlap statistics of the top-k sets of two or more stored runs."""
        run_ids = [r for r in (run_ids or []) if r]
        if len(run_ids) < 2:
            raise MucsError("choose at least two runs to compare")
        atts = [self.store.load(r) for r in run_ids]
        for a in atts:
            self.check_run(a)
        sets = [list(map(int, a.top)) for a in atts]
        names = [_short(r, a) for r, a in zip(run_ids, atts)]
        pw = ov.pairwise_overlaps(sets)
        rnd = ov.random_overlaps(len(self.data), [len(s) for s in sets], pairs=pairs, seed=0)
        return dict(names=names, matrix=ov.overlap_matrix(sets), pairwise=pw, random=rnd,
                    mean=float(pw.mean()), random_mean=float(rnd.mean()), recurring=ov.recurring(sets, 12))

    def recurring_gallery(self, rec: list, target: int = 128) -> list:
        """[(image, caption)] of the images found in two or more of the compared top-k sets."""
        out = []
        for i, c in rec:
            out.append((upscale(self.data.images[i], target), f"{i}{self._lab(i)} · in {c} of the sets"))
        return out

    # --- history with the main settings -------------------------------------------------------------
    def run_settings_dict(self, run_id: str) -> dict:
        """The settings a stored run recorded ({} when its files are damaged or gone)."""
        try:
            return self.store.settings(run_id)
        except MucsError:
            return {}

    def history_table(self, every: bool = False) -> list:
        """The store's rows, newest first, plus the main settings of each run (K, lr factor, step cap,
        whether it used the paper's settings) and the model and training set it was made with. Only
        the served model's and training set's runs (and those that do not say) unless `every`: the
        others do not open here."""
        metas = {m["id"]: m for m in self.store.list()}
        rows = []
        for row in self.store.table():   # id, created, kind, source, class, steps, converged, top-k, seconds
            m = metas.get(row[0], {})
            if not every and not self.is_served(m):
                continue
            st = self.run_settings_dict(row[0])
            extra = [st.get("noises", ""), _lr_text(st), st.get("max_steps", ""), paper_mark(st) if st else ""]
            names = [os.path.basename(os.path.normpath(str(m[k]))) if m.get(k) else "" for k in ("model", "data")]
            # compact cells (the table's columns fit their words): minutes of the UTC time, whole seconds
            when = str(row[1] or "")[:16].replace("T", " ")
            secs = round(float(row[8])) if isinstance(row[8], (int, float)) and math.isfinite(row[8]) else row[8]
            rows.append([row[0], when] + list(row[2:5]) + extra + list(row[5:8]) + [secs] + names)
        return rows

    def is_served(self, meta: dict) -> bool:
        """Whether a run's meta.json names the served model and training set (or does not say). A
        bare name (the shipped examples record 'fashion16', not this machine's path) is compared
        with the served folder's or file's name."""
        from ..defaults import shown_path
        for key, here in (("model", self.model.path or self.model_path), ("data", self.data.source)):
            theirs = meta.get(key)
            if not theirs or not here:
                continue
            theirs, here = os.path.normpath(str(theirs)), os.path.normpath(shown_path(here))
            if theirs != here and (os.sep in theirs or theirs != os.path.basename(here)):
                return False
        return True

    # --- explain, compare, report --------------------------------------------------------------------
    def load_run(self, run_id: str) -> Attribution:
        if not run_id:
            raise MucsError("no run chosen: attribute a query or open a run from the history first")
        att = self.store.load(run_id)
        self.check_run(att)
        return att

    def keep_unlearned(self, run_id: str, unet) -> None:
        """Keep a run's unlearned UNet in memory (the last KEEP_UNLEARNED runs only)."""
        with self._lock:
            self._unlearned[run_id] = unet
            self._unlearned.move_to_end(run_id)
            while len(self._unlearned) > KEEP_UNLEARNED:
                self._unlearned.popitem(last=False)

    def unlearned(self, run_id: str):
        with self._lock:
            return self._unlearned.get(run_id)

    def replay(self, run_id: str, progress=None, cancel=None) -> dict:
        """Re-run a stored run's unlearning (deterministic) and keep the unlearned UNet for 'why'."""
        from .why import replay_unlearning, run_settings
        att = self.load_run(run_id)
        unet, info = replay_unlearning(self.model, self.attributor.inputs(), att, run_settings(att, self.settings), progress,
                                       cancel)
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        self.keep_unlearned(run_id, unet)
        return info

    def baselines_context(self):
        """The baselines' Context, on a private copy of the UNet: the feature baseline hooks the UNet's
        mid-block, which must not catch the forward passes of an attribution running at the same time."""
        import copy
        from ..method.baselines import Context
        with self._baseline_lock:
            if self._ctx is None:
                model = copy.copy(self.model)
                model.unet = copy.deepcopy(self.model.unet).eval()
                from ..method.baselines import CPU_OPTIONS
                self._ctx = Context(model, self.data, self.settings, self.attributor.cache_dir,
                                    options={k: dict(v) for k, v in CPU_OPTIONS.items()})
        return self._ctx

    def pixel_index(self) -> NeighbourIndex:
        if self._neigh is None:
            self._neigh = NeighbourIndex.pixels(self.data)
        return self._neigh

    def why(self, run_id: str, index, with_baselines: bool = True):
        """`mucs.explorer.why.Why` for training item `index` of run `run_id` (per-noise L_u when the run's
        unlearned model is in memory)."""
        from .compare import method_scores
        from .why import explain
        att = self.load_run(run_id)
        rank_scores = None
        if with_baselines and att.query_image is not None:
            with self._baseline_lock:
                rank_scores = method_scores(self.baselines_context(), att, run_id, ("pixel_nn", "feature_nn"))
        return explain(self.model, self.data, self.attributor, att, index, self.unlearned(run_id), rank_scores,
                       self.pixel_index(), class_name=self.class_name)

    def index_gallery(self, items, target: int = 96) -> list:
        """[(image, 'index class · extra')] for [(index, extra)]."""
        out = []
        for i, extra in items:
            out.append((upscale(self.data.images[int(i)], target), f"{int(i)}{self._lab(i)}" + (f" · {extra}" if extra else "")))
        return out

    def compare_methods(self, run_id: str, methods=None) -> dict:
        """Methods side by side for a run's query (see mucs.explorer.compare.methods_side_by_side), with an HTML grid."""
        from .compare import METHODS, grid_html, methods_side_by_side
        att = self.load_run(run_id)
        with self._baseline_lock:
            m = methods_side_by_side(self.baselines_context(), att, run_id, tuple(methods or METHODS))
        mucs_top = set(m["tops"].get("mucs", []))
        rows: list = []
        for name, label in zip(m["names"], m["labels"]):
            items = m["tops"][name]
            mark = {i: ("m", "also MUCS") for i in items if name != "mucs" and i in mucs_top}
            if name == "mucs":
                mark = {i: ("s", f"+{m['shared'][i] - 1} other list{'s' if m['shared'][i] > 2 else ''}")
                        for i in items if i in m["shared"]}
            rows.append(dict(title=label, subtitle=(f"{len(m['with_mucs'][name])}/{len(items)} shared with MUCS"
                             if name != "mucs" else "the run's own scores") + f" · {m['seconds'][name]:.1f} s", items=items,
                             scores={i: _score_text(name, m["scores"][name][i]) for i in items}, mark=mark,
                             query=att.query_image if not rows else None))
        key = ('<span style="border-color:#2a9d4b;background:#e9f7ee">green: also in MUCS\'s top-k</span>'
               '<span style="border-color:#e8890c;background:#fff4e0">orange (MUCS row): in other methods\' lists too</span>')
        m["html"] = grid_html(rows, self.data.images, self._cls_of, key, "methods")
        return m

    def compare_runs(self, run_ids) -> dict:
        """Runs side by side: each run's query and top-k in one row, images shared between runs highlighted."""
        from .compare import grid_html, runs_side_by_side
        run_ids = [r for r in (run_ids or []) if r]
        if len(run_ids) < 2:
            raise MucsError("choose at least two runs to compare")
        atts = [self.load_run(r) for r in run_ids]
        names = [_short(r, a) for r, a in zip(run_ids, atts)]
        c = runs_side_by_side(atts, names)
        rows = []
        for r, a, name in zip(run_ids, atts, names):
            items = [int(i) for i in a.top]
            rows.append(dict(title=name, subtitle=r, items=items, query=a.query_image,
                             query_note=a.query.get("source") or "",
                             scores={i: _score_text("mucs", a.scores[i]) for i in items},
                             mark={i: ("s", f"in {c['shared'][i]} runs") for i in items if i in c["shared"]}))
        key = '<span style="border-color:#e8890c;background:#fff4e0">orange: in two or more of these runs</span>'
        c["html"] = grid_html(rows, self.data.images, self._cls_of, key, "runs")
        return c

    def _cls_of(self, i) -> str:
        return self.item_text(i, 40)

    def downloads_dir(self) -> str:
        """This session's folder for downloadable files (a file per run and format, replaced atomically)."""
        if self._downloads is None or not os.path.isdir(self._downloads):
            # tagged with this process: once it is gone, the next app or run write removes it (mucs.leftovers)
            self._downloads = tempfile.mkdtemp(prefix="mucs-downloads-", suffix=owner_tag())
        return self._downloads

    def export_file(self, run_id: str, fmt: str) -> str:
        """The run's scores as CSV or JSON (see RunStore.export), in the downloads folder."""
        return self.store.export(run_id, fmt, out_dir=self.downloads_dir(), class_names=self.class_names)

    def report_file(self, run_id: str, out_dir: Optional[str] = None) -> str:
        """Write the run's self-contained HTML report into `out_dir` (default: the downloads folder)."""
        from .report import render_report, write_report
        att = self.load_run(run_id)
        meta = self.store.meta(run_id)
        text = render_report(att, run_id, meta, self.data, self.class_names)
        out_dir = out_dir or self.downloads_dir()
        return write_report(os.path.join(out_dir, f"mucs-report-{run_id.replace(':', '-')}.html"), text)


# --- history with the main settings -------------------------------------------------------------------
def paper_mark(settings: dict) -> str:
    """'paper' when a run used the paper's choices (Settings() defaults; the step cap and top-k do not
    count), 'paper (old σ grid)' for such runs made before the noise range existed, '' otherwise."""
    ref = Settings().to_dict()
    old_grid = "sigma_min" not in settings
    for k in PAPER_KEYS:
        if k in ("sigma_min", "sigma_max") and old_grid:
            continue
        v, r = settings.get(k, ref[k]), ref[k]
        if isinstance(r, float) and isinstance(v, (int, float)) and not isinstance(v, bool):
            if abs(float(v) - r) > 1e-9 * max(1.0, abs(r)):
                return ""
        elif (list(v) if isinstance(v, (list, tuple)) else v) != (list(r) if isinstance(r, (list, tuple)) else r):
            return ""
    return "paper (old σ grid)" if old_grid else "paper"


def _score_text(method: str, score: float) -> str:
    """A method's score as its caption shows it: skew for MUCS, squared distance for the NN
    baselines (their score is −d²), mean normalised rank for ensembles."""
    if "+" in method:
        return f"rank avg {score:.3f}"
    if method.endswith("_nn"):
        return f"d² {max(0.0, -float(score)):.3g}"
    if method in ("dtrak", "trak"):
        return f"score {score:.3g}"
    if method == "abu":
        return f"Δloss {score:.3g}"
    return f"skew {score:.4f}"


def _lr_text(settings: dict) -> str:
    if settings.get("lr") is not None:
        return f"lr {settings['lr']:g}"
    f = settings.get("lr_factor")
    return "" if f is None else f"{f:g}"


def _short(run_id: str, att: Attribution) -> str:
    cls = att.query.get("class_name")
    tail = run_id.split(":")[-1][-6:]
    return f"{cls or 'query'} {tail}"


def _levels(levels) -> str:
    """' (kept: σ 0.40–80, steps 301–991)' from result.json's noise_levels, '' for older runs."""
    if not levels:
        return ""
    sig = [lv["sigma_t"] for lv in levels]
    ts = [lv["timestep"] for lv in levels]
    return f" (kept: σ {min(sig):.2g}–{max(sig):.3g}, steps {min(ts)}–{max(ts)})"
