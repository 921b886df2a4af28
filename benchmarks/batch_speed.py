"""A batch of G queries against G single runs, in one process, on a model (default: the embedded
Fashion-MNIST model): does a batch cost G × (unlearning + L_u) and nothing more?

The batch is what `mucs attribute --seeds` and the app's batch run: one Attributor (model, data,
noise set, L_o and L_null loaded or computed once), then mucs.explorer.collection.run_batch. Each
single run does what a loop of `mucs attribute --image` calls would do inside one process: load
the model and the training set, build a new Attributor (L_o and L_null read back from the disk
cache the batch filled) and attribute the same query. Both use the same generated queries and
settings, so their top-k must agree (printed). Prints the per-query stage times of both and the
totals. Usage: python benchmarks/batch_speed.py [--queries 16] [--profile fast] [--settings JSON] [--out FILE.json]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs import Attributor, load_dataset, load_model  # noqa: E402
from mucs.cache import atomic_write  # noqa: E402
from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL, settings_for  # noqa: E402
from mucs.explorer import collection as coll  # noqa: E402
from mucs.method.attribute import Attribution  # noqa: E402
from mucs.sources.models import class_names_for  # noqa: E402

STAGES = ("original_losses", "null_loss", "unlearning", "unlearned_losses")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=16, help="G: the batch size (default 16)")
    ap.add_argument("--classes", default="0,3,7,9", help="classes of the generated queries (seeds 0, 1, ... each)")
    ap.add_argument("--profile", default="fast", help="settings profile (recommended, fast, paper)")
    ap.add_argument("--sampler-steps", type=int, default=20)
    ap.add_argument("--settings", default=None,
                    help='setting overrides as JSON on top of the profile, e.g. \'{"max_steps": 10}\' for a quick run')
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores seen")
    s = settings_for(a.model, a.profile, **json.loads(a.settings or "{}")).validate()
    classes = [int(c) for c in a.classes.split(",")]
    seeds = list(range(-(-a.queries // len(classes))))
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        # --- the batch: everything loaded once ---------------------------------------------------------
        t0 = time.perf_counter()
        model, data = load_model(a.model), load_dataset(a.data)
        att = Attributor(model, data, s, cache_dir=cache)
        t_load = time.perf_counter() - t0
        items = coll.generated_items(classes, seeds, a.sampler_steps)[:a.queries]
        record = coll.new_record("bench", items, dict(kind="generated"), s.to_dict(), model, data,
                                 class_names_for(model, data))
        folder = os.path.join(tmp, "bench")
        coll.create_folder(folder, record)
        t0 = time.perf_counter()
        record = coll.run_batch(att, items, s, folder, record)
        t_batch = time.perf_counter() - t0
        batch_runs = [Attribution.load(os.path.join(folder, it.name)) for it in items]
        print(f"model {a.model}, N={len(data)}, profile {a.profile}: K={s.noises}, B={s.batch_size}, "
              f"cap {s.max_steps}; G={len(items)} generated queries ({a.sampler_steps} DDIM steps)")
        print(f"batch: load {t_load:.1f} s, then {t_batch:.1f} s for {len(items)} queries "
              f"(shared stages, first item only: {record.get('stage_times')})")
        # --- the single runs: a fresh model, data and Attributor for each ----------------------------
        singles, per_single, same = [], [], 0
        for it, b in zip(items, batch_runs):
            t0 = time.perf_counter()
            m1, d1 = load_model(a.model), load_dataset(a.data)
            a1 = Attributor(m1, d1, s, cache_dir=cache)
            q = coll.make_query(m1, it)
            r = a1.attribute(q, m1.check_label(it.label), settings=s, source=it.source)
            per_single.append(time.perf_counter() - t0)
            singles.append(r)
            same += [int(i) for i in r.top] == [int(i) for i in b.top]
        t_single = sum(per_single)
    print("\nper query (s): item, batch [unlearning, L_u, item wall], single [load+L_o/L_null read, unlearning, "
          "L_u, wall]")
    rows = []
    for it, b, r, w in zip(record["items"], batch_runs, singles, per_single):
        bs, ss = b.stage_times, r.stage_times
        own_s = float(ss.get("unlearning", 0)) + float(ss.get("unlearned_losses", 0))
        rows.append(dict(item=it["name"], batch_unlearning=bs.get("unlearning"), batch_lu=bs.get("unlearned_losses"),
                         batch_wall=it["seconds"], single_overhead=round(w - own_s, 2),
                         single_unlearning=ss.get("unlearning"), single_lu=ss.get("unlearned_losses"),
                         single_wall=round(w, 2), steps=b.steps))
        print(f"  {it['name']:>16}  batch [{bs.get('unlearning', 0):6.1f} {bs.get('unlearned_losses', 0):6.1f} "
              f"{it['seconds']:6.1f}]  single [{w - own_s:5.1f} {ss.get('unlearning', 0):6.1f} "
              f"{ss.get('unlearned_losses', 0):6.1f} {w:6.1f}]  {b.steps} steps")
    own = sum(float(b.stage_times.get("unlearning", 0)) + float(b.stage_times.get("unlearned_losses", 0))
              for b in batch_runs)
    out = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=platform.node(),
               torch=torch.__version__, threads=torch.get_num_threads(), model=a.model, profile=a.profile,
               queries=len(items), same_top_k=same, settings=s.to_dict(), batch_load_s=round(t_load, 2),
               batch_s=round(t_batch, 2),
               batch_own_s=round(own, 2), singles_s=round(t_single, 2), rows=rows,
               shared=record.get("stage_times"),
               median_single_overhead_s=round(statistics.median(r["single_overhead"] for r in rows), 2))
    print(f"\nbatch of {len(items)}: {t_load + t_batch:.1f} s including its one load ({t_load:.1f} s); its queries' "
          f"own work (unlearning + L_u) {own:.1f} s = {own / max(t_batch, 1e-9):.0%} of the batch's run time")
    print(f"{len(items)} single runs: {t_single:.1f} s; each paid a median {out['median_single_overhead_s']:.1f} s "
          f"beyond its own unlearning + L_u (loading the model, data, noise set and the cached L_o / L_null)")
    print(f"batch / singles: {(t_load + t_batch) / max(t_single, 1e-9):.2f}; top-k equal in both for {same} of "
          f"{len(items)} queries")
    if a.out:
        atomic_write(a.out, json.dumps(out, indent=1).encode())


if __name__ == "__main__":
    main()
