"""Why-this-image for a screened run: an item that screening did not keep is said plainly to be screened out
(with its screening score), checked on the levels its stored means were taken over (it used to read "does not
match" for every such item), and, with the unlearned model at hand, its skew over all K levels is computed."""
import numpy as np
import pytest

from mucs import Attributor, load_dataset, load_model
from mucs.explorer.why import explain, replay_unlearning, run_settings, screening_levels
from mucs.method.unlearn import skew
from mucs.settings import Settings
from mucs.sources.data import QueryImage, to_model_range


@pytest.fixture(scope="module")
def screened(tiny_model_dir, tiny_npz, tmp_path_factory):
    """A screened run (2 of 8 levels first, 6 of 32 items kept) and what scoring saw: the kept mask and L_u."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    s = Settings(noises=8, batch_size=32, null_batches=4, null_batch_size=32, max_steps=10, top_k=3,
                 screen_noises=2, screen_keep=6)
    a = Attributor(m, d, s, cache_dir=str(tmp_path_factory.mktemp("cache")))
    seen = {}
    real = a.unlearned_losses

    def spy(*args, **kw):        # observes the collaborator; explain() is what is tested
        lu, mask, screening = real(*args, **kw)
        seen.update(lu=lu.copy(), mask=mask.copy())
        return lu, mask, screening
    a.unlearned_losses = spy
    att = a.attribute(QueryImage(to_model_range(d.images[3]), []), int(d.labels[3]))
    return m, d, a, att, seen


def test_a_screened_out_item_is_said_to_be_and_checked_on_its_levels(screened):
    m, d, a, att, seen = screened
    cols = screening_levels(att)
    assert cols is not None and len(cols) == 2 and seen["mask"].sum() == 6
    out = int(np.flatnonzero(~seen["mask"])[0])
    kept = int(att.top[0])
    w = explain(m, d, a, att, out)
    assert w.screening_levels == cols and w.checks == {"L_o": True}
    text = w.summary()
    assert "Screened out at the first stage" in text and f"{att.scores[out]:.4f} is its screening score" in text
    assert "mean matches" in text and "does not match" not in text and "2 screening levels" in text
    assert "also computes its skew over all K" in text and w.full_skew is None
    k = explain(m, d, a, att, kept)                       # a kept item: scored on all K, no such note
    assert k.screening_levels is None and k.checks == {"L_o": True} and "Screened out" not in k.summary()
    assert "K = 8 noise levels" in k.summary()


def test_with_the_unlearned_model_its_full_skew_is_computed(screened):
    m, d, a, att, seen = screened
    s = run_settings(att, a.settings)
    unet, info = replay_unlearning(m, a.inputs(), att, s)
    assert info["same_steps"]
    out = int(np.flatnonzero(~seen["mask"])[0])
    w = explain(m, d, a, att, out, unlearned_unet=unet)
    assert w.checks == {"L_o": True, "L_u": True}
    # what scoring every item in full would have given this one (the Attributor's own L_u matrix, unscreened)
    full = s.replace(screen_noises=0)
    lo, _ = a.original_losses(full)
    lu, mask, _ = a.unlearned_losses(unet, a.noise_set(full), lo, full)
    assert mask.all() and not np.isnan(lu).any()
    assert w.full_skew == pytest.approx(float(skew(lu, lo, s.normalised)[out]), rel=1e-4)
    assert not np.isclose(w.full_skew, att.scores[out])             # not the screening score again
    assert f"computed here from the replayed unlearned model: **{w.full_skew:.4f}**" in w.summary()
    assert "the run's top-k starts at" in w.summary()
