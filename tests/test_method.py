"""The method's pieces: noise set, loss matrices, bound, stop rule, freezing, skew."""
import numpy as np
import pytest
import torch

from mucs import Attributor, QueryImage, Settings, load_dataset, load_model
from mucs.method.losses import loss_matrix
from mucs.sources.models import alphas_cumprod, per_item_loss
from mucs.method.noise import karras_sigmas, make_noise_set, scheduler_sigmas
from mucs.method.unlearn import forget_loss, should_stop, skew, top_k, unlearn
from conftest import assert_same_unlearning


def test_noise_set_karras_high_noise_fraction(tiny_model_dir):
    m = load_model(tiny_model_dir)
    ac = m.scheduler.alphas_cumprod
    ns = make_noise_set(ac, (1, 8, 8), K=10, fraction=0.7, seed=3)
    assert ns.eps.shape == (10, 1, 8, 8) and ns.timesteps.shape == (10,)
    sig = scheduler_sigmas(ac)
    assert float(sig.max()) > 1000          # a cosine DDPM schedule: its last steps are pure noise
    full = karras_sigmas(round(10 / 0.7), max(0.002, float(sig.min())), min(80.0, float(sig.max())))
    assert np.allclose(ns.sigmas.numpy(), full[:10], rtol=1e-5)         # the first K of round(K/f)
    assert ns.sigmas[0] == pytest.approx(80.0, rel=1e-5)                # starts at the sampler's σ_max
    assert ns.sigmas[-1] > full[-1]                                    # the low-noise tail is never used
    assert torch.all(ns.timesteps[:-1] >= ns.timesteps[1:])             # highest noise first
    # each σ maps to the discrete timestep nearest in log σ
    for s, t in zip(ns.sigmas.double(), ns.timesteps):
        assert int(t) == int((sig.log() - s.log()).abs().argmin())
    again = make_noise_set(ac, (1, 8, 8), K=10, fraction=0.7, seed=3)
    assert torch.equal(again.eps, ns.eps) and torch.equal(again.timesteps, ns.timesteps)
    other = make_noise_set(ac, (1, 8, 8), K=10, fraction=0.7, seed=4)
    assert not torch.equal(other.eps, ns.eps)


def test_default_grid_lies_in_the_sampler_range():
    """The paper's defaults (K = 100, f = 0.7) on the embedded model's cosine schedule: every kept
    level within EDM's 0.002–80 and its timestep's own σ close to it; the lowest kept is about 0.4."""
    from mucs.defaults import DEFAULT_MODEL
    from diffusers import DDPMScheduler
    ac = DDPMScheduler.from_pretrained(DEFAULT_MODEL, subfolder="scheduler").alphas_cumprod
    s = Settings()
    ns = make_noise_set(ac, (1, 16, 16), K=s.noises, fraction=s.noise_fraction, sigma_min=s.sigma_min,
                        sigma_max=s.sigma_max)
    assert len(ns) == 100
    assert float(ns.sigmas.min()) >= 0.002 and float(ns.sigmas.max()) <= 80.0 + 1e-4
    assert 0.3 < float(ns.sigmas.min()) < 0.5
    assert float(ns.timestep_sigmas.max()) < 100 and float(ns.timestep_sigmas.min()) > 0.2
    levels = ns.levels()
    assert levels[0]["timestep"] == int(ns.timesteps[0]) and levels[0]["sigma"] == pytest.approx(80.0)
    # a range outside the scheduler's is refused, a partly outside one is clipped
    with pytest.raises(ValueError):
        make_noise_set(ac, (1, 4, 4), K=4, sigma_min=1e5, sigma_max=1e6)
    clipped = make_noise_set(ac, (1, 4, 4), K=4, sigma_min=1e-9, sigma_max=1e9)
    sig = scheduler_sigmas(ac)
    assert float(clipped.sigmas[0]) == pytest.approx(float(sig.max()), rel=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "uniform_range", "lognormal"])
def test_training_noise_kinds(kind):
    """uniform: every step; uniform_range: only steps with σ in [σ_min, σ_max]; lognormal: ln σ
    centred on p_mean. Seeded: the same generator seed gives the same draws."""
    from diffusers import DDPMScheduler
    from mucs.method.noise import TrainingNoise
    ac = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    sig = scheduler_sigmas(ac)
    tn = TrainingNoise(ac, kind, 0.002, 80.0, p_mean=-1.2, p_std=1.2)
    t, eps = tn.sample(4000, (1, 2, 2), torch.Generator().manual_seed(0), "cpu")
    t2, _ = tn.sample(4000, (1, 2, 2), torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(t, t2) and eps.shape == (4000, 1, 2, 2)
    s = sig[t]
    if kind == "uniform":
        assert float(s.max()) > 1000                       # reaches the pure-noise steps
    elif kind == "uniform_range":
        assert float(s.max()) <= 80 and float(s.min()) >= 0.002
        assert len(t.unique()) > 900                      # nearly every step is in range
    else:
        assert abs(float(s.log().median()) + 1.2) < 0.1   # median σ = e^−1.2
    with pytest.raises(ValueError):
        TrainingNoise(ac, "bogus")


def test_edm_weighting_for_an_epsilon_model():
    """For an ε-model EDM's weighted x0 error equals (1 + σ²/σ_d²)·‖ε̂ − ε‖²; for an x0-model it is
    the weight times the x0 error; v-models go through x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂."""
    from diffusers import DDPMScheduler
    ac = DDPMScheduler(num_train_timesteps=100).alphas_cumprod.float()

    def Const():      # a "model" predicting 0.3 everywhere
        return lambda x, t, cond: torch.full_like(x, 0.3)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((3, 1, 4, 4), generator=g), torch.randn((3, 1, 4, 4), generator=g)
    t = torch.tensor([5, 50, 95])
    sigma2 = (1 - ac[t]) / ac[t]
    plain = per_item_loss(Const(), ac, "epsilon", x0, None, t, eps)
    edm = per_item_loss(Const(), ac, "epsilon", x0, None, t, eps, weighting="edm", sigma_data=0.5)
    assert torch.allclose(edm, (1 + sigma2 / 0.25) * plain, rtol=1e-4)
    # x0-model: weight × ‖x̂0 − x0‖²
    plain0 = per_item_loss(Const(), ac, "sample", x0, None, t, eps)
    edm0 = per_item_loss(Const(), ac, "sample", x0, None, t, eps, weighting="edm")
    assert torch.allclose(edm0, (sigma2 + 0.25) / (sigma2 * 0.25) * plain0, rtol=1e-4)
    # v-model: the same x0 error as computed by hand
    a = ac[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    x0_hat = a.sqrt() * xt - (1 - a).sqrt() * 0.3
    by_hand = (sigma2 + 0.25) / (sigma2 * 0.25) * ((x0_hat - x0) ** 2).flatten(1).mean(1)
    assert torch.allclose(per_item_loss(Const(), ac, "v_prediction", x0, None, t, eps, weighting="edm"), by_hand, rtol=1e-4)


def test_loss_matrix_uses_the_same_noise_for_every_item(tiny_model_dir, tiny_npz):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    ns = make_noise_set(m.scheduler.alphas_cumprod, (1, 8, 8), K=5, seed=0)
    L = loss_matrix(m.unet, m, d, ns, batch_size=7)   # chunks that split items across batches
    assert L.shape == (len(d), 5)
    ac = alphas_cumprod(m)
    with torch.no_grad():
        for i in (0, 13, 31):
            for k in (0, 4):
                ref = per_item_loss(m.predictor(), ac, m.prediction_type, d.tensor([i]), m.label_cond(d.labels[[i]]),
                                    ns.timesteps[k:k + 1], ns.eps[k:k + 1])
                assert L[i, k] == pytest.approx(float(ref), rel=1e-4, abs=1e-6)


def test_loss_matrix_through_loader_workers_and_into_a_memmap_is_unchanged(tiny_model_dir, tiny_npz, tmp_path,
                                                                          monkeypatch, fast_settings):
    """The loss loop's DataLoader gives bit-identical rows with worker processes, for a subset of
    rows, and when the Attributor writes a large matrix into a memory-mapped file."""
    import mucs.method.attribute as attribute_mod
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    ns = make_noise_set(m.scheduler.alphas_cumprod, (1, 8, 8), K=5, seed=0)
    L0 = loss_matrix(m.unet, m, d, ns, batch_size=7, workers=0)
    assert np.array_equal(loss_matrix(m.unet, m, d, ns, batch_size=7, workers=2), L0)
    rows = np.array([31, 2, 17])
    assert np.array_equal(loss_matrix(m.unet, m, d, ns, batch_size=7, items=rows), L0[rows])
    a = Attributor(m, d, fast_settings, cache_dir=str(tmp_path))
    small = a.loss_matrix(m.unet, ns, fast_settings)
    monkeypatch.setattr(attribute_mod, "MEMMAP_BYTES", 1)
    big = a.loss_matrix(m.unet, ns, fast_settings)
    assert isinstance(big, np.memmap) and not isinstance(small, np.memmap)
    assert np.array_equal(np.asarray(big), small)


def test_neighbour_vectors_in_slices_equal_the_whole_set(tiny_model_dir, tiny_npz):
    """Neighbour indexes are built slice by slice (never a whole-set float copy) with the same vectors."""
    from mucs.method import neighbours
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    whole = neighbours.pixel_features(d.tensor())
    assert np.array_equal(neighbours._in_slices(d, lambda idx: neighbours.pixel_features(d.tensor(idx)), rows=5), whole)
    feats = neighbours.model_features(m, d.tensor(), m.label_cond(d.labels), batch_size=4)
    sliced = neighbours._in_slices(d, lambda idx: neighbours.model_features(m, d.tensor(idx), m.label_cond(d.labels[idx]),
                                                                            batch_size=4), rows=8)
    assert np.allclose(sliced, feats, rtol=1e-5, atol=1e-6)


def test_consistent_noise_gives_zero_skew_for_an_unchanged_model(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    """With a step cap of 0 the 'unlearned' model is the original: consistent noise must give
    exactly zero skew; fresh noise (the ablation) does not."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    a = Attributor(m, d, fast_settings.replace(max_steps=0, tol=0.0), cache_dir=str(tmp_path))
    q = QueryImage(d.tensor([0])[0], [])
    r = a.attribute(q, 0)
    assert r.steps == 0 and not r.converged
    assert np.abs(r.scores).max() < 1e-6
    r2 = a.attribute(q, 0, settings=a.settings.replace(consistent_noise=False))
    assert np.abs(r2.scores).max() > 1e-3


def test_bound_gives_no_gradient_above_null():
    losses = torch.tensor([0.5, 2.0, 3.0], requires_grad=True)
    forget_loss(losses, loss_null=1.0).backward()
    assert losses.grad.tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    losses.grad = None
    forget_loss(losses, loss_null=1.0, bounded=False).backward()   # plain ascent: gradient everywhere
    assert losses.grad.tolist() == pytest.approx([1 / 3] * 3)
    assert float(forget_loss(torch.tensor([0.5, 2.0]), 1.0)) == pytest.approx(0.75)


def test_stop_rule():
    assert should_stop(0.95, 1.0, 0.05) and should_stop(1.2, 1.0, 0.05)
    assert not should_stop(0.9499, 1.0, 0.05)


def test_unlearning_stops_before_the_step_when_forgotten(tiny_model_dir, tiny_npz, fast_settings):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    x = d.tensor([0])[0]
    u = unlearn(m, d, x, 0, loss_null=1e-6, s=fast_settings)   # already "as bad as null"
    assert u.steps == 0 and u.converged and len(u.curve) == 1
    before = {n: p.clone() for n, p in m.unet.named_parameters()}
    u = unlearn(m, d, x, 0, loss_null=1e6, s=fast_settings.replace(max_steps=3))
    assert u.steps == 3 and not u.converged and len(u.curve) == 4
    assert not u.unet.training                                   # kept in eval mode on purpose
    for n, p in u.unet.named_parameters():
        if "bias" in n:
            assert torch.equal(p, before[n]), n                  # frozen
    assert any(not torch.equal(p, before[n]) for n, p in u.unet.named_parameters() if "bias" not in n)
    for n, p in m.unet.named_parameters():                       # the original is untouched
        assert torch.equal(p, before[n])
    assert u.lr == pytest.approx(2e-3 / 10)                      # training lr ÷ lr factor
    from mucs.errors import MucsError
    with pytest.raises(MucsError, match="class-conditional model needs the query's label"):
        unlearn(m, d, x, None, loss_null=1.0, s=fast_settings)


def test_skew_and_top_k():
    lo = np.array([[1.0, 1.0], [1.0, 2.0], [2.0, 2.0]])
    lu = np.array([[1.0, 1.0], [3.0, 2.0], [1.0, 2.0]])
    s = skew(lu, lo)
    assert s == pytest.approx([0.0, 0.5 * (2 / (4 + 1e-3)), 0.5 * (-1 / (3 + 1e-3))])
    assert skew(lu, lo, normalised=False) == pytest.approx([0.0, 1.0, -0.5])
    assert top_k(np.array([0.1, 0.5, 0.5, -1.0]), 3).tolist() == [1, 2, 0]


def test_attribution_is_deterministic(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    s = fast_settings.replace(max_steps=5)
    q = QueryImage(d.tensor([3])[0], [])
    r1 = Attributor(m, d, s, cache_dir=str(tmp_path / "a")).attribute(q, 3)
    r2 = Attributor(m, d, s, cache_dir=str(tmp_path / "b")).attribute(q, 3)
    assert r1.scores.shape == (len(d),) and r1.top.shape == (s.top_k,)
    assert np.array_equal(r1.scores, r2.scores) and np.array_equal(r1.top, r2.top)
    r3 = Attributor(m, d, s.replace(seed=1), cache_dir=str(tmp_path / "a")).attribute(q, 3)
    assert not np.array_equal(r1.scores, r3.scores)


def test_training_image_attributes_to_itself(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    """The sanity check: each of 6 training images, used as the query with its own label, must rank
    itself in the top 3 of 32 for at least 5 of the 6 (it is rank 1 for all of them when this was written)."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    a = Attributor(m, d, fast_settings, cache_dir=str(tmp_path))
    ranks = []
    for i in (0, 5, 10, 17, 22, 31):
        r = a.attribute(QueryImage(d.tensor([i])[0], []), int(d.labels[i]))
        ranks.append(int(np.where(np.argsort(-r.scores, kind="stable") == i)[0][0]))
    assert sum(rk < 3 for rk in ranks) >= 5, ranks


def test_fragile_correction_subtracts_other_class_reference_skews(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    """fragile_refs=1: one generated reference per class, unlearned once and cached; a query's score is
    its plain skew minus each item's mean skew over the references of the *other* classes."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    s = fast_settings.replace(max_steps=6)
    a = Attributor(m, d, s, cache_dir=str(tmp_path))
    q = QueryImage(d.tensor([2])[0], [])
    plain = a.attribute(q, 2)
    fixed = a.attribute(q, 2, settings=s.replace(fragile_refs=1))
    refs, labels, cached = a.reference_skews(s.replace(fragile_refs=1))
    assert cached and refs.shape == (4, len(d)) and labels.tolist() == [0, 1, 2, 3]
    assert fixed.info["fragile_correction"]["used"] == 3
    expected = plain.scores - refs[labels != 2].mean(0)
    np.testing.assert_allclose(fixed.scores, expected, rtol=1e-6, atol=1e-9)
    assert not np.allclose(fixed.scores, plain.scores)


def test_loader_workers_only_for_a_gpu_and_a_training_set():
    """Worker processes help only where they overlap a device's work on many items."""
    from mucs.method.losses import LOADER_MIN_ITEMS, loader_workers
    assert loader_workers("cpu", 10 * LOADER_MIN_ITEMS) == 0
    assert loader_workers("cuda", 5) == 0                      # why-this-image's few rows
    assert loader_workers("cuda:0", LOADER_MIN_ITEMS) >= 1


def test_one_forward_over_forget_and_retain_gives_each_batch_its_own_losses(tiny_model_dir, tiny_npz):
    """Unlearning sends the forget and retain batches through the UNet together; that is the same
    computation only if an item's loss does not depend on the rest of the batch (eval mode, GroupNorm)."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    ac = alphas_cumprod(m)
    g = torch.Generator().manual_seed(0)
    xf, xr = d.tensor([0])[0].expand(6, *d.tensor([0])[0].shape), d.tensor(list(range(6)))
    yf, yr = torch.zeros(6, dtype=torch.long), d.label_tensor(list(range(6)))
    tf, tr = torch.randint(0, 1000, (6,), generator=g), torch.randint(0, 1000, (6,), generator=g)
    ef, er = torch.randn(xf.shape, generator=g), torch.randn(xr.shape, generator=g)
    with torch.no_grad():
        c = lambda y: {"class_labels": y}  # noqa: E731
        apart = torch.cat([per_item_loss(m.predictor(), ac, m.prediction_type, xf, c(yf), tf, ef),
                           per_item_loss(m.predictor(), ac, m.prediction_type, xr, c(yr), tr, er)])
        together = per_item_loss(m.predictor(), ac, m.prediction_type, torch.cat([xf, xr]), c(torch.cat([yf, yr])),
                                 torch.cat([tf, tr]), torch.cat([ef, er]))
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-6)


def test_screened_scoring_scores_only_the_kept_items_and_agrees_with_full_scoring(tiny_model_dir, tiny_npz,
                                                                                   fast_settings, tmp_path,
                                                                                   monkeypatch):
    """Screening: every item on S levels, the M most skewed on all K; their L_u equals full scoring's
    (same unlearned model, same noise), the top-k comes from the kept items, and the forwards add up.
    The evaluation's L_u cache gives the same screened result without unlearning again."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    s = fast_settings.replace(max_steps=6)
    q = QueryImage(d.tensor([4])[0], [])
    a = Attributor(m, d, s, cache_dir=str(tmp_path))
    full = a.attribute(q, 0)
    scr = a.attribute(q, 0, settings=s.replace(screen_noises=2, screen_keep=8))
    N, K = len(d), s.noises
    info = scr.info["screening"]
    assert info["kept"] == 8 and len(info["noises"]) == 2
    assert info["forwards"] == N * 2 + 8 * (K - 2) and info["saving"] == pytest.approx(N * K / info["forwards"])
    # the kept items' mean L_u over all K is full scoring's, to float tolerance (the others average S levels)
    fully = np.flatnonzero(np.isclose(scr.loss_unlearned, full.loss_unlearned, rtol=1e-4))
    assert len(fully) >= 8 and np.isfinite(scr.scores).all()
    assert set(scr.top.tolist()) <= set(fully.tolist())
    np.testing.assert_allclose(scr.scores[scr.top], full.scores[scr.top], rtol=1e-4, atol=1e-6)
    assert full.info["screening"] is None
    # the evaluation's path: a cached full L_u is screened without a new unlearning, to the same result
    c = Attributor(m, d, s, cache_dir=str(tmp_path / "c"))
    c.cache_unlearned = True
    c.attribute(q, 0)
    import mucs.method.attribute as attribute_module
    calls, real = [], attribute_module.unlearn
    monkeypatch.setattr(attribute_module, "unlearn", lambda *a_, **k_: calls.append(1) or real(*a_, **k_))
    cached = c.attribute(q, 0, settings=s.replace(screen_noises=2, screen_keep=8))
    assert calls == [] and cached.info["screening"] == info
    assert cached.top.tolist() == scr.top.tolist()
    np.testing.assert_allclose(cached.scores, scr.scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("changes", [dict(), dict(bounded=False, retain=False)])
def test_micro_batched_unlearning_takes_the_same_steps(tiny_model_dir, tiny_npz, fast_settings, changes, monkeypatch):
    """unlearn_chunk splits each step's forget + retain items into micro-batches whose gradients add up:
    the same curve and weights as the whole batch at once, to float tolerance (here 2·B = 64 items in
    chunks of 10: the last one short, and chunks straddle the forget/retain boundary). The weights are
    compared under plain SGD: AdamW divides each gradient by its own running size, which turns float
    noise in a near-zero gradient into a full-size step (seen on time_emb_proj weights)."""
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr * 100))
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    x = d.tensor([1])[0]
    s = fast_settings.replace(max_steps=3, tol=0.0, **changes)
    whole = unlearn(m, d, x, 1, loss_null=5.0, s=s)
    parts = unlearn(m, d, x, 1, loss_null=5.0, s=s.replace(unlearn_chunk=10))
    assert whole.steps == 3
    assert_same_unlearning(whole, parts, m, moved_at_least=1e-4)


def test_bf16_loss_matrix_is_close_to_fp32_and_cached_apart(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    """precision="bf16" runs the loss-matrix forwards under bf16 autocast (for GPUs): close to fp32, the
    same item order, and never read from or written to an fp32 cache entry."""
    from scipy.stats import spearmanr
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    ns = make_noise_set(m.scheduler.alphas_cumprod, (m.channels, m.size, m.size), K=8, seed=0)
    full = loss_matrix(m.unet, m, d, ns, 64)
    half = loss_matrix(m.unet, m, d, ns, 64, precision="bf16")
    assert half.dtype == np.float32 and np.isfinite(half).all() and not np.array_equal(full, half)
    assert np.abs(half - full).max() / np.abs(full).max() < 0.05
    assert spearmanr(full.mean(1), half.mean(1)).statistic > 0.95
    a = Attributor(m, d, fast_settings, cache_dir=str(tmp_path))
    lo32, _ = a.original_losses(fast_settings)
    lo16, cached = a.original_losses(fast_settings.replace(precision="bf16"))
    assert not cached and not np.array_equal(lo32, lo16)
    with pytest.raises(Exception, match="precision must be one of fp32, bf16"):
        fast_settings.replace(precision="fp16").validate()


def test_channels_last_and_compiled_loss_matrices_equal_the_plain_one(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    """memory_format="channels_last" and compile="aot_eager" (dynamo + AOTAutograd: what inductor
    compiles, without the C++ build) give the plain losses to float tolerance; a second UNet of the
    same architecture runs through the same compiled graph with its own weights; the UNet's weights
    are put back contiguous and stay trainable; an unlearned L_u cached by a plain run serves them."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    ns = make_noise_set(m.scheduler.alphas_cumprod, (m.channels, m.size, m.size), K=8, seed=0)
    plain = loss_matrix(m.unet, m, d, ns, 56)          # 7 items per chunk: a smaller last chunk too
    cl = loss_matrix(m.unet, m, d, ns, 56, memory_format="channels_last")
    assert all(p.is_contiguous() for p in m.unet.parameters())
    # compiled: chunks of 8 items, one shape to compile (each new shape or stride compiles again)
    comp = loss_matrix(m.unet, m, d, ns, 64, compile="aot_eager")
    for other in (cl, comp):
        assert other.shape == plain.shape and np.allclose(other, plain, rtol=1e-4, atol=1e-6)
    # another UNet of the same architecture (as each query's unlearned copy) reuses the compiled graph
    import copy
    from torch._dynamo.utils import counters
    other_unet = copy.deepcopy(m.unet)
    with torch.no_grad():
        for p in other_unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    graphs = counters["stats"]["unique_graphs"]
    moved = loss_matrix(other_unet, m, d, ns, 64, compile="aot_eager")
    assert counters["stats"]["unique_graphs"] == graphs
    assert np.allclose(moved, loss_matrix(other_unet, m, d, ns, 64), rtol=1e-4, atol=1e-6)
    assert not np.allclose(moved, plain, rtol=1e-4, atol=1e-6)      # its own weights, not the template's
    # still a trainable module (no inference tensors left behind by the conversion)
    x = torch.randn(2, m.channels, m.size, m.size)
    m.unet(x, torch.tensor([5, 9]), class_labels=torch.tensor([0, 1])).sample.pow(2).mean().backward()
    assert all(p.grad is not None for p in m.unet.parameters() if p.requires_grad)
    m.unet.zero_grad(set_to_none=True)
    # a plain run's cached L_u is read back under the other machine choices (the same matrix)
    s = fast_settings.replace(max_steps=2)
    a = Attributor(m, d, s, cache_dir=str(tmp_path))
    a.cache_unlearned = True
    q = QueryImage(d.tensor([3])[0], [])
    first = a.attribute(q, label=int(d.labels[3]))
    second = Attributor(m, d, s.replace(memory_format="channels_last", compile="aot_eager"), cache_dir=str(tmp_path))
    second.cache_unlearned = True
    again = second.attribute(q, label=int(d.labels[3]))
    assert np.array_equal(first.scores, again.scores)
    with pytest.raises(Exception, match="compile must be one of off, inductor, aot_eager"):
        s.replace(compile="tvm").validate()
    with pytest.raises(Exception, match="memory_format must be one of"):
        s.replace(memory_format="nhwc").validate()
