"""One progress interface: stages, fractions and unlearning figures; cancel stops a run cleanly."""
import io
import threading

import pytest

from mucs import Attributor, Cancelled, QueryImage, TextBar, load_dataset, load_model


def test_progress_events_and_text_bar(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    events = []
    r = Attributor(m, d, fast_settings.replace(max_steps=3), cache_dir=str(tmp_path)).attribute(
        QueryImage(d.tensor([1])[0], []), 1, progress=events.append)
    stages = [e.stage for e in events]
    for s in ("original losses", "null loss", "unlearning", "unlearned losses", "done"):
        assert s in stages
    assert all(0.0 <= e.fraction <= 1.0 for e in events)
    unl = [e for e in events if e.stage == "unlearning"]
    assert len(unl) == r.steps + 1
    assert set(unl[0].info) == {"step", "loss_f", "loss_r", "loss_null"}
    assert unl[-1].info["loss_f"] == pytest.approx(r.curve[-1]["loss_f"])
    buf = io.StringIO()
    bar = TextBar(stream=buf)
    for e in events:
        bar(e)
    bar.close()
    assert "unlearning" in buf.getvalue() and "100.0%" in buf.getvalue()



class _OldTextBar:
    """Frozen copy of the hand-written bar that tqdm replaced (its throttle left out)."""

    def __init__(self, stream, width=30):
        self.stream, self.width, self.stage = stream, width, None

    def __call__(self, ev):
        if ev.stage != self.stage:
            if self.stage is not None:
                self.stream.write("\n")
            self.stage = ev.stage
        filled = int(ev.fraction * self.width)
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.info.items())
        self.stream.write(f"\r{ev.stage:<18} [{'#' * filled}{'.' * (self.width - filled)}] {ev.fraction:6.1%} {extra}   ")


def _last_frames(text):
    """(stage, bar, percentage, figures) of the last frame drawn for each stage."""
    import re
    out = {}
    for frame in text.replace("\n", "\r").split("\r"):
        m = re.match(r"(.{18}) \[([#.]+)\] +([\d.]+%),? ?(.*?)(?: +\d\d:\d\d<.*)?\s*$", frame)
        if m:
            out[m.group(1).strip()] = (m.group(2), m.group(3), m.group(4).strip())
    return out


def test_tqdm_bar_shows_what_the_hand_written_bar_showed():
    from mucs.progress import ProgressEvent
    events = [ProgressEvent("original losses", f, {}) for f in (0.0, 0.37, 1.0)]
    events += [ProgressEvent("unlearning", f, dict(step=i, loss_f=0.5 / (i + 1), loss_null=1.25))
               for i, f in enumerate((0.1, 0.4, 0.9, 0.85, 1.0))]
    events += [ProgressEvent("unlearned losses", 0.999, {})]      # a stage that ends before reaching 100 %
    old, new = io.StringIO(), io.StringIO()
    bar, ref = TextBar(stream=new), _OldTextBar(old)
    for e in events:
        bar(e)
        ref(e)
    bar.close()
    got, want = _last_frames(new.getvalue()), _last_frames(old.getvalue())
    assert got == want and set(got) == {"original losses", "unlearning", "unlearned losses"}
    assert got["unlearning"] == ("#" * 30, "100.0%", "step=4 loss_f=0.1 loss_null=1.25")

def test_cancel_raises_and_writes_no_cache(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    cancel = threading.Event()

    def stop_in_original_losses(e):
        if e.stage == "original losses":
            cancel.set()
    with pytest.raises(Cancelled):
        Attributor(m, d, fast_settings.replace(eval_batch_size=32), cache_dir=str(tmp_path / "c")).attribute(
            QueryImage(d.tensor([1])[0], []), 1, progress=stop_in_original_losses, cancel=cancel)
    assert not (tmp_path / "c").exists() or not any(p.startswith("loss_original") for p in (tmp_path / "c").iterdir())


def test_overall_progress_is_monotone_with_a_time_estimate():
    from mucs.progress import OverallProgress, ProgressEvent, format_seconds
    t = [0.0]
    o = OverallProgress(clock=lambda: t[0])
    seen = []
    # L_o and L_null come from the cache (no events); the unlearning fraction dips (98 % then 90 %)
    for stage, frac, dt in [("unlearning", 0.1, 0), ("unlearning", 0.5, 4), ("unlearning", 0.98, 4),
                            ("unlearning", 0.9, 4), ("unlearned losses", 0.2, 2), ("unlearned losses", 1.0, 4),
                            ("done", 1.0, 0)]:
        t[0] += dt
        seen.append(o(ProgressEvent(stage, frac)))
    fr = [s.fraction for s in seen]
    assert fr == sorted(fr) and fr[-1] == 1.0
    assert seen[0].remaining is None and seen[2].remaining is not None and seen[2].remaining > 0
    assert seen[3].stage_fraction == 0.98          # the dip is not shown
    assert "unlearning · overall" in seen[2].text() and "left" in seen[2].text()
    assert "left" not in seen[-1].text()
    # weights from an earlier run's stage times; cached stages (≈0 s) get a small weight
    w = OverallProgress.from_times(dict(original_losses=0.1, null_loss=0.0, unlearning=40, unlearned_losses=20)).weights
    assert abs(sum(w.values()) - 1) < 1e-9 and w["unlearning"] > 0.6 and w["original losses"] < 0.01
    assert format_seconds(42) == "42 s" and format_seconds(125) == "2 min 05 s"
