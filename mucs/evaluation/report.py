"""Report: the results JSON as markdown tables, an optional verdict against targets given as
inputs (none is built in), and writing the JSON (never over a published file without --force)."""
import json
import math
import os
from typing import Optional

import numpy as np

from ..cache import atomic_write
from ..errors import MucsError
from .config import GROUPS, METRICS


def _fmt(summary: Optional[dict]) -> str:
    if not summary:
        return "–"
    spread = ""
    if summary.get("auc_per_repeat"):
        spread = f" [{min(summary['auc_per_repeat']):.2f}–{max(summary['auc_per_repeat']):.2f}]"
    return f"{summary['auc']:.2f}{spread} ({summary['mean_relative_change']:+.1f}%)"


def markdown_table(result: dict) -> str:
    """Per method: removed images, then AUC (mean relative change) per group and metric."""
    names = {"ssim": "SSIM", "mse": "MSE", "feature_cosine": "feat. cos"}
    head = ["method", "removed"] + [f"{g} {names[m]}" for m in METRICS for g in GROUPS] + ["overlap within"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    within = result["overlap"]["within"]
    for m, r in result["methods"].items():
        ov = within.get(m if m != "random" else "random#0", {}).get("mean_pairwise")
        cells = [f"`{m}`", f"{r['removed']:.0f}"] + [_fmt(r.get(g, {}).get(metric)) for metric in METRICS for g in GROUPS]
        cells.append("–" if ov is None or ov != ov else f"{ov:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ci_table(result: dict) -> str:
    """Target-SSIM AUC with its 95 % bootstrap interval, mean target SSIM and control SSIM AUC."""
    lines = ["| method | target SSIM AUC | 95 % interval | mean SSIM (targets) | control SSIM AUC |", "|---|---|---|---|---|"]
    for m, r in result["methods"].items():
        t, c = r["targets"]["ssim"], r.get("controls", {}).get("ssim", {})
        ci = (f"single repeats {min(t['auc_per_repeat']):.2f}–{max(t['auc_per_repeat']):.2f}" if m == "random"
              else f"{t['auc_ci95'][0]:.2f}–{t['auc_ci95'][1]:.2f}")
        if t.get("auc_per_seed"):
            ci += "; per seed " + ", ".join(f"{s}: {v:.2f}" for s, v in t["auc_per_seed"].items())
        lines.append(f"| `{m}` | {t['auc']:.2f} | {ci} | {t['mean']:.3f} | {c.get('auc', float('nan')):.2f} |")
    return "\n".join(lines)


def overlap_table(result: dict) -> str:
    """Overlap of the methods' top-k sets, target by target, averaged (1 = identical)."""
    between = result["overlap"]["between"]
    names = list(between)
    lines = ["| | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| `{a}` | " + " | ".join(f"{between[a][b]:.2f}" for b in names) + " |" for a in names]
    return "\n".join(lines)


def paired_table(result: dict, metric: str = "ssim") -> str:
    """MUCS − each other method on the same targets: the per-target AUC difference (mean = the AUCs'
    difference) and the target-similarity drop difference, with bootstrap intervals over targets."""
    rows = ["| MUCS − method | Δ target AUC | 95 % interval | Δ similarity drop | 95 % interval "
            "| targets favouring MUCS / other |",
            "|---|---|---|---|---|---|"]
    for name, r in (result.get("paired") or {}).items():
        p = r[metric]
        rows.append(f"| `{name}` | {p['auc_difference']:+.3f} | {p['auc_difference_ci95'][0]:+.3f} – "
                    f"{p['auc_difference_ci95'][1]:+.3f} | {p['similarity_drop_difference']:+.4f} | "
                    f"{p['similarity_drop_difference_ci95'][0]:+.4f} – {p['similarity_drop_difference_ci95'][1]:+.4f} | "
                    f"{p['items_favouring_a']} / {p['items_favouring_b']} of {p['n']} |")
    return "\n".join(rows)


def cost_table(result: dict) -> str:
    """Per-query compute seconds of each method, D-TRAK/TRAK's one-off feature pass apart."""
    rows = ["| method | per query (s) | one-off (s) |", "|---|---|---|"]
    for m, r in (result.get("timing", {}).get("per_query") or {}).items():
        rows.append(f"| `{m}` | {r['per_query_seconds']:.1f} | {r['one_off_seconds']:.1f} |")
    return "\n".join(rows)


def verdict(result: dict, target_auc: float) -> str:
    """MUCS's target-SSIM AUC against `target_auc` (an input, e.g. a target value), its
    control AUC's distance from 0.5, and the methods it does not beat on target SSIM."""
    m = result["methods"]
    if "mucs" not in m:
        return "MUCS not evaluated yet."
    t = m["mucs"]["targets"]["ssim"]["auc"]
    c = m["mucs"].get("controls", {}).get("ssim", {}).get("auc", float("nan"))
    not_beaten = [k for k, v in m.items() if k != "mucs" and not t > v["targets"]["ssim"]["auc"]]
    parts = [f"MUCS targets SSIM AUC = {t:.2f} ({'meets' if t >= target_auc else 'misses'} the ≥ {target_auc:g} target)",
             f"controls SSIM AUC = {c:.2f} (|AUC − 0.5| = {abs(c - 0.5):.2f})",
             "beats every other method on target SSIM AUC" if not not_beaten else
             f"does not beat: {', '.join(not_beaten)}"]
    return "; ".join(parts) + "."


def json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def write_json(path: str, result: dict) -> None:
    atomic_write(path, json.dumps(result, indent=1, default=json_default).encode())


def check_out(path: str, work: str, force: bool = False) -> None:
    """Before anything is computed: refuse an --out that is a folder, or an existing file other than
    the work folder's own results.json (a published table) unless `force`."""
    from ..cache import check_out_file
    own = os.path.abspath(os.path.join(work, "results.json"))
    if os.path.abspath(path) == own:
        return
    if os.path.lexists(path) and not force and not os.path.isdir(path):
        raise MucsError(f"--out {path} exists: nothing was computed; pass --force to replace it or choose "
                        f"another file (the table is always written to {own})")
    check_out_file(path, force=True)


def target_auc(value) -> Optional[float]:
    if value is None:
        return None
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise MucsError(f"--target-auc must be in [0, 1], got {value!r}")
    return v
