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
