"""The result of one attribution (`Attribution`): every item's score, the top-k and what explains and
reproduces the run, with its run files (scores.csv, result.json, losses.npz, query.png)."""
import csv
import io
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..cache import atomic_write_dir
from ..checks import dumps_strict
from .unlearn import top_k

SCORES_CSV_COLUMNS = ("rank", "index", "score", "label", "class", "loss_original", "loss_unlearned")


def _cell(v) -> str:
    """A loss for scores.csv: empty for a method that has none (NaN: D-TRAK, TRAK, the NN baselines)."""
    return f"{v:.8g}" if np.isfinite(v) else ""


@dataclass
class UnlearnRecord:
    """What a result keeps of an unlearning run (the weights themselves are not kept)."""
    steps: int
    converged: bool
    curve: list
    lr: float


def csv_text(text) -> str:
    """A class name or caption for a CSV cell: one starting with = + - @ (or a tab or CR) gets a leading
    apostrophe, so a spreadsheet shows it as text instead of running it as a formula (CSV injection)."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@dataclass
class Attribution:
    """All scores, the top-k, and everything needed to explain and reproduce the run."""
    scores: np.ndarray                 # (N,) skew per training item, by stable index
    top: np.ndarray                    # (k,) indices, best first
    loss_original: np.ndarray          # (N,) mean over noises of L_o
    loss_unlearned: np.ndarray         # (N,) mean over noises of L_u
    loss_null: Optional[float]         # None: a run of a method without L_null (D-TRAK, TRAK, AbU, NN)
    steps: int
    converged: bool
    curve: list
    stage_times: dict
    settings: dict
    query: dict                        # label, class name, conversions, source
    query_image: Optional[np.ndarray] = None   # (H, W, C) uint8, what the model saw
    labels: Optional[np.ndarray] = None
    info: dict = field(default_factory=dict)   # model/data fingerprints, cache hits, lr, version
    captions: Optional[list] = None            # the training items' captions (text-conditional models)

    def result_json(self) -> dict:
        return dict(settings=self.settings, query=self.query, loss_null=self.loss_null,
                    unlearning_steps=self.steps, converged=self.converged, stage_times=self.stage_times,
                    top_k=[int(i) for i in self.top], top_k_scores=[float(self.scores[i]) for i in self.top],
                    curve=self.curve, **self.info)

    def scores_csv(self, class_names=None) -> str:
        """Every training item, best first: rank, index, score, label, class, L_o, L_u (and caption, for
        a text-conditional model's run) — the run folder's scores.csv and the app's CSV export; the one
        CSV writer."""
        order = top_k(self.scores, len(self.scores))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(SCORES_CSV_COLUMNS + (("caption",) if self.captions is not None else ()))
        for rank, i in enumerate(order, 1):
            lab: Any = "" if self.labels is None else int(self.labels[i])   # "" in the CSV when unlabelled
            name = class_names[lab] if lab != "" and class_names and 0 <= lab < len(class_names) else ""
            row = [rank, int(i), f"{self.scores[i]:.8g}", lab, csv_text(name), _cell(self.loss_original[i]),
                   _cell(self.loss_unlearned[i])]
            w.writerow(row + ([csv_text(self.captions[i])] if self.captions is not None else []))
        return buf.getvalue()

    def items_json(self, class_names=None) -> list:
        """Every training item as a dict, best first, with the columns of scores.csv (rank, index,
        score, label, class, loss_original, loss_unlearned[, caption]): the JSON export's `items`.
        A value that is not finite (an item screening left out) is null."""
        def num(v):
            v = float(v)
            return v if np.isfinite(v) else None
        out = []
        for rank, i in enumerate(top_k(self.scores, len(self.scores)), 1):
            lab = None if self.labels is None else int(self.labels[i])
            row = dict(rank=rank, index=int(i), score=num(self.scores[i]), label=lab,
                       **{"class": class_names[lab] if lab is not None and class_names and 0 <= lab < len(class_names)
                          else ""},
                       loss_original=num(self.loss_original[i]), loss_unlearned=num(self.loss_unlearned[i]))
            if self.captions is not None:
                row["caption"] = str(self.captions[i])
            out.append(row)
        return out

    def save(self, out_dir: str, class_names=None) -> None:
        """Write scores.csv, result.json, losses.npz and query.png into `out_dir`, atomically."""
        atomic_write_dir(out_dir, self.files(class_names))

    def files(self, class_names=None) -> dict:
        """The run files {name: bytes}: scores.csv, result.json, losses.npz and query.png (when known)."""
        from PIL import Image
        buf = io.BytesIO()
        labels = {} if self.labels is None else dict(labels=np.asarray(self.labels, np.int64))
        if self.captions is not None:
            labels["captions"] = np.asarray(self.captions, dtype=str)
        # a method without losses (all NaN: D-TRAK, TRAK, the NN baselines) saves none: every saved number is finite
        losses = {} if np.isnan(self.loss_original).all() and np.isnan(self.loss_unlearned).all() else dict(
            loss_original=self.loss_original, loss_unlearned=self.loss_unlearned)
        arrays = dict(scores=self.scores, **losses, **labels)
        np.savez(buf, **arrays)   # type: ignore[arg-type]  # numpy's stub types **arrays against savez's own flags
        files = {"scores.csv": self.scores_csv(class_names).encode(),
                 "result.json": dumps_strict(self.result_json(), "result.json", indent=1).encode(),
                 "losses.npz": buf.getvalue()}
        if self.query_image is not None:
            png = io.BytesIO()
            q = self.query_image
            Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q).save(png, format="PNG")
            files["query.png"] = png.getvalue()
        return files

    @classmethod
    def load(cls, out_dir: str) -> "Attribution":
        """Reopen a saved run (as written by `save`); every file's shape is checked (mucs.runfiles)."""
        from ..runfiles import read_run
        r, arrays, q = read_run(out_dir)
        scores, lo, lu, labels = (arrays["scores"], arrays["loss_original"], arrays["loss_unlearned"],
                                  arrays.get("labels"))
        captions = [str(c) for c in arrays["captions"]] if "captions" in arrays else None
        keys = ("settings", "query", "loss_null", "unlearning_steps", "converged", "stage_times", "top_k",
                "top_k_scores", "curve")
        return cls(scores=scores, top=np.array(r["top_k"], np.int64), loss_original=lo, loss_unlearned=lu,
                   loss_null=r["loss_null"], steps=r["unlearning_steps"], converged=r["converged"], curve=r["curve"],
                   stage_times=r["stage_times"], settings=r["settings"], query=r["query"], query_image=q,
                   labels=labels, info={k: v for k, v in r.items() if k not in keys}, captions=captions)
