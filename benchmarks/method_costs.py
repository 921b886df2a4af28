"""Per-query cost of every attribution method side by side, in one process, on one query.

    python benchmarks/method_costs.py [--model M --data D] [--index 3] [--threads 1] [--methods ...]

Prints, per method, the seconds of its query-independent part (D-TRAK/TRAK's feature pass, AbU's Fisher
and original losses, MUCS's L_o and L_null: each computed once and cached) and of the query itself,
measured in this run (caches in a fresh temporary folder, so the one-off parts are really computed).
D-TRAK/TRAK/AbU run with the CPU options of the app and the evaluation (mucs.method.baselines.CPU_OPTIONS)
unless --paper-options. Timings depend on the machine's load: say whether it was contended.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--index", type=int, default=3, help="training item used as the query")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--methods", default="pixel_nn,feature_nn,dtrak,trak,abu,mucs")
    p.add_argument("--paper-options", action="store_true", help="D-TRAK d = 32768 and AbU 80 x 625 draws (slow)")
    p.add_argument("--out", default=None, help="also write the figures as JSON")
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from mucs.defaults import settings_for
    from mucs.method import baselines
    from mucs.sources.data import QueryImage, load_dataset
    from mucs.sources.models import load_model
    model, data = load_model(a.model, "cpu"), load_dataset(a.data)
    s = settings_for(model.path, "recommended")
    opts = {} if a.paper_options else {k: dict(v) for k, v in baselines.CPU_OPTIONS.items()}
    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        ctx = baselines.Context(model, data, s, cache_dir=cache, options=opts)
        q = QueryImage(data.tensor([a.index])[0], [])
        label = int(data.labels[a.index]) if data.labels is not None else None
        for m in [x.strip() for x in a.methods.split(",") if x.strip()]:
            t0 = time.perf_counter()
            att = baselines.attribution(m, ctx, q, label)
            total = time.perf_counter() - t0
            st = att.stage_times
            once = sum(st.get(k, 0.0) for k in ("features", "fisher", "original_losses", "null_loss"))
            rows[m] = dict(one_off_seconds=once, per_query_seconds=total - once, total_seconds=total,
                           top5=[int(i) for i in att.top[:5]], stages={k: round(v, 2) for k, v in st.items()})
            print(f"{m:12s} one-off {once:8.1f} s   per query {total - once:8.1f} s   top-5 {rows[m]['top5']}", flush=True)
    info = dict(model=a.model, data=a.data, n_train=len(data), parameters=sum(v.numel() for v in model.unet.parameters()),
                threads=a.threads, options=opts or "papers'", load=os.getloadavg(), methods=rows)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(info, f, indent=1)
    print(json.dumps({k: v for k, v in info.items() if k != "methods"}))


if __name__ == "__main__":
    main()
