"""D-TRAK / TRAK and AbU (mucs.method.dtrak, mucs.method.abu) against direct computations on the tiny
model, their feature cache, and `mucs attribute --method` writing a run the app's history reopens."""
import json
import os

import numpy as np
import pytest
import torch

from mucs.method import abu, dtrak


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tiny_npz):
    from mucs.sources.data import load_dataset
    from mucs.sources.models import load_model
    return load_model(tiny_model_dir, "cpu"), load_dataset(tiny_npz)


def autograd_gradients(model, data, items, S, seed, output, x=None, label=None):
    """Per-item gradients the plain way: one backward per (item, timestep), same timesteps and noise."""
    ac = model.scheduler.alphas_cumprod.float()
    ts = dtrak.spaced_timesteps(len(ac), S)
    params = list(model.unet.parameters())
    rows = []
    for i in items:
        x0 = data.tensor([i]) if x is None else x[None]
        y = data.label_tensor([i]) if x is None else torch.tensor([label])
        eps = dtrak.fixed_noise(seed, i if x is None else "query", len(ts), x0.shape[1:])
        total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
        for j, t in enumerate(ts):
            a = ac[t]
            pred = model.unet(a.sqrt() * x0 + (1 - a).sqrt() * eps[j:j + 1], t.view(1), class_labels=y).sample
            f = (pred ** 2).mean() if output == "mean-squared-l2-norm" else ((eps[j:j + 1] - pred) ** 2).mean()
            g = torch.autograd.grad(f, params)
            total += torch.cat([v.flatten() for v in g]).double()
        rows.append(total / len(ts))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("output", ["mean-squared-l2-norm", "loss"])
def test_dtrak_without_projection_equals_a_direct_computation(tiny, tmp_path, output):
    """Φ = the exact per-item gradients (autograd item by item, on a few items), and the scores equal
    g_qᵀ (ΦᵀΦ + λI)⁻¹ φ_i written through Φ's SVD (not the library's push-through form)."""
    model, data = tiny
    o = dtrak.DTrakOptions(timesteps=3, dim=0, lam=1.0, seed=7, batch=8)
    feats = dtrak.training_features(model, data, output, o, str(tmp_path))
    G = np.asarray(feats.phi, np.float64)
    rows = [0, 5, 13, len(data) - 1]
    direct = autograd_gradients(model, data, rows, 3, 7, output)
    np.testing.assert_allclose(G[rows], direct, rtol=2e-3, atol=1e-6 * np.abs(direct).max())
    U, s, Vt = np.linalg.svd(G, full_matrices=False)
    lam = float(np.median(s) ** 2)            # a λ that matters: the kernel is far from λ·I
    x, label = data.tensor([5])[0], int(data.labels[5])
    got = dtrak.query_scores(model, feats, x, label, lam)
    gq = autograd_gradients(model, data, [0], 3, 7, output, x=x, label=label)[0]
    # (ΦᵀΦ + λI)⁻¹ g_q through the SVD, never forming the p × p inverse (p = the UNet's parameters)
    vq = Vt @ gq
    want = G @ (Vt.T @ (vq / (s ** 2 + lam)) + (gq - Vt.T @ vq) / lam)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    # the query is training image 5 itself (same label, its own noise): first for D-TRAK's output; the loss
    # gradient (TRAK) at 3 timesteps is noisier, so there only among the top 3 of 32
    rank = int((got > got[5]).sum()) + 1
    assert rank == 1 if output == "mean-squared-l2-norm" else rank <= 3


def test_dtrak_projected_scores_match_the_kernel_and_approach_the_exact_ones(tiny, tmp_path):
    model, data = tiny
    x, label = data.tensor([9])[0], int(data.labels[9])
    exact_o = dtrak.DTrakOptions(timesteps=2, dim=0, lam=1.0, seed=3)
    exact_f = dtrak.training_features(model, data, "mean-squared-l2-norm", exact_o, str(tmp_path))
    G = np.asarray(exact_f.phi, np.float64)
    lam = float(np.median(np.linalg.svd(G, compute_uv=False)) ** 2)
    exact = dtrak.query_scores(model, exact_f, x, label, lam)
    # d < N: the d × d (Woodbury) branch and the back-projection M·g = Φ·P·g, against φ_qᵀ(ΦᵀΦ + λI)⁻¹Φᵀ by hand
    small = dtrak.DTrakOptions(timesteps=2, dim=16, lam=16 * lam, seed=3, block=8)
    f = dtrak.training_features(model, data, "mean-squared-l2-norm", small, str(tmp_path))
    assert f.back is not None and f.phi.shape == (len(data), 16)
    phi = np.asarray(f.phi, np.float64)
    gq = autograd_gradients(model, data, [0], 2, 3, "mean-squared-l2-norm", x=x, label=label)[0]
    phi_q = dtrak.projector(len(gq), small).project(torch.from_numpy(gq[None]).float(), model_id=0)[0].double().numpy()
    want = phi @ np.linalg.solve(phi.T @ phi + small.lam * np.eye(16), phi_q)
    np.testing.assert_allclose(dtrak.query_scores(model, f, x, label), want, rtol=2e-3, atol=1e-4 * np.abs(want).max())
    # d large: the projection keeps the geometry (ΦΦᵀ ≈ d·GGᵀ), so with λ·d the scores approach the exact ones
    big = dtrak.DTrakOptions(timesteps=2, dim=4096, lam=4096 * lam, seed=3, block=512)
    proj = dtrak.query_scores(model, dtrak.training_features(model, data, "mean-squared-l2-norm", big, str(tmp_path)),
                              x, label)
    assert np.corrcoef(proj, exact)[0, 1] > 0.97
    assert np.argmax(proj) == np.argmax(exact)


def test_dtrak_feature_cache_hits_misses_and_ignores_a_damaged_entry(tiny, tmp_path):
    model, data = tiny
    o = dtrak.DTrakOptions(timesteps=1, dim=32, seed=1, block=16)
    first = dtrak.training_features(model, data, "loss", o, str(tmp_path))
    again = dtrak.training_features(model, data, "loss", o, str(tmp_path))
    assert not first.cached and again.cached
    np.testing.assert_array_equal(first.phi, again.phi)
    assert isinstance(again.phi, np.memmap)                       # read memory-mapped
    other = dtrak.training_features(model, data, "mean-squared-l2-norm", o, str(tmp_path))   # another output: a miss
    assert not other.cached and not np.allclose(other.phi, first.phi)
    # λ is not part of the features: another λ reuses them
    assert dtrak.training_features(model, data, "loss", dtrak.DTrakOptions(timesteps=1, dim=32, seed=1, block=16,
                                                                           lam=3.0), str(tmp_path)).cached
    folder = os.path.join(str(tmp_path), f"dtrak-{dtrak.features_key(model, data, 'loss', o)}")
    with open(os.path.join(folder, "meta.json"), "w") as fh:
        fh.write("{not json")
    rebuilt = dtrak.training_features(model, data, "loss", o, str(tmp_path))
    assert not rebuilt.cached
    np.testing.assert_allclose(rebuilt.phi, first.phi, rtol=1e-5, atol=1e-7)


def test_abu_scores_are_the_loss_increase_after_one_fisher_preconditioned_step(tiny, tmp_path):
    model, data = tiny
    o = abu.AbuOptions(accum=2, batch=8, loss_timesteps=4, fisher_epochs=1, lr=0.01)
    a = abu.Abu(model, data, str(tmp_path), o)
    i = 6
    x, label = data.tensor([i])[0], int(data.labels[i])
    scores, rec = a.scores(x, label)
    # the scoring: per-item loss over 4 spaced timesteps, noise fixed per (item, timestep), by hand
    ac = model.scheduler.alphas_cumprod.float()
    ts = dtrak.spaced_timesteps(len(ac), 4)

    def losses(unet):
        out = []
        with torch.no_grad():
            for j in range(len(data)):
                eps = dtrak.fixed_noise(o.seed, ("abu", j), 4, data.tensor([j]).shape[1:])
                a_ = ac[ts].view(-1, 1, 1, 1)
                x0 = data.tensor([j]).expand(4, -1, -1, -1)
                pred = unet(a_.sqrt() * x0 + (1 - a_).sqrt() * eps, ts,
                            class_labels=data.label_tensor([j]).expand(4)).sample
                out.append(float(((eps - pred) ** 2).mean()))
        return np.array(out)
    before = losses(model.unet)
    np.testing.assert_allclose(rec["loss_original"], before, rtol=1e-4)
    np.testing.assert_allclose(scores, rec["loss_unlearned"] - rec["loss_original"], rtol=1e-9)
    # the update: θ + lr·ḡ/(F·N), ḡ the mean gradient over the accumulated draws (same generator as the library)
    fisher, _ = a.fisher()
    unet = abu.unlearn(model, fisher, len(data), x, label, o)
    g = torch.Generator().manual_seed(int(o.seed) + 23)
    ref = __import__("copy").deepcopy(model.unet)
    ref.zero_grad()
    T = len(ac)
    for _ in range(o.accum):
        t = torch.randperm(T, generator=g)[:o.batch]
        eps = torch.randn((o.batch, *x.shape), generator=g)
        a_ = ac[t].view(-1, 1, 1, 1)
        xq = x[None].expand(o.batch, -1, -1, -1)
        pred = ref(a_.sqrt() * xq + (1 - a_).sqrt() * eps, t, class_labels=torch.full((o.batch,), label)).sample
        ((pred - eps) ** 2).mean().backward()
    for (n, p), (_, q) in zip(ref.named_parameters(), unet.named_parameters()):
        f = fisher[n].double()
        step = torch.where(f > 0, o.lr * p.grad.double() / (f.clamp_min(1e-300) * len(data)) / o.accum, 0 * f)
        torch.testing.assert_close(q.double(), p.detach().double() + step, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rec["loss_unlearned"], losses(unet), rtol=1e-4)
    # real behaviour: unlearning a training image raises its own loss more than the typical item's
    assert scores[i] > np.median(scores)


def test_cli_method_writes_a_run_the_app_history_reopens(tiny_model_dir, tiny_npz, tmp_path):
    from mucs.__main__ import main
    from mucs.explorer.history import RunStore
    from mucs.sources.data import load_dataset, to_uint8
    from PIL import Image
    data = load_dataset(tiny_npz)
    img = tmp_path / "q.png"
    Image.fromarray(to_uint8(data.tensor([4])[0])[..., 0]).save(img)
    runs = tmp_path / "runs"
    rc = main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", str(img), "--label",
               str(int(data.labels[4])), "--method", "dtrak", "--method-options", '{"dim": 32, "timesteps": 2}',
               "--runs", str(runs), "--cache-dir", str(tmp_path / "cache"), "--top-k", "5"])
    assert rc == 0
    store = RunStore(str(runs), examples=None)
    (run_id,) = store.ids()
    att = store.load(run_id)
    assert att.info["method"] == "dtrak" and att.info["method_record"]["options"]["dim"] == 32
    assert store.meta(run_id)["method"] == "dtrak"
    assert len(att.scores) == len(data) and len(att.top) == 5 and att.loss_null is None
    assert att.top[0] == 4                      # a training image attributes to itself
    with open(os.path.join(store.path(run_id), "result.json")) as fh:
        assert json.load(fh)["method"] == "dtrak"
    with np.load(os.path.join(store.path(run_id), "losses.npz")) as z:   # no losses saved, rather than NaN
        assert set(z.files) == {"scores", "labels"} and np.isfinite(z["scores"]).all()
    report = tmp_path / "report.html"                # the HTML report of such a run names the method
    assert main(["report", store.path(run_id), "--out", str(report), "--data", tiny_npz]) == 0
    assert "dtrak: D-TRAK" in report.read_text()
    # a bad method or option: one error line, exit 2, nothing written
    assert main(["attribute", "--model", tiny_model_dir, "--data", tiny_npz, "--image", str(img), "--label", "0",
                 "--method", "dtrak", "--method-options", '{"dimm": 3}', "--runs", str(runs)]) == 2
    assert store.ids() == [run_id]


def test_dtrak_trak_abu_refuse_a_text_model_with_one_line(tiny_text_dir, tiny_captions_npz, tmp_path, capsys):
    from mucs.__main__ import main
    from mucs.method import baselines
    from mucs.sources.models import load_model
    from PIL import Image
    model = load_model(tiny_text_dir, "cpu")
    for name in ("dtrak", "trak", "abu", "mucs+abu"):
        assert "pixel UNet2DModel" in baselines.unsupported(name, model)
    assert baselines.unsupported("pixel_nn", model) is None and baselines.unsupported("mucs", model) is None
    img = tmp_path / "q.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(img)
    runs = tmp_path / "runs"
    capsys.readouterr()
    assert main(["attribute", "--model", tiny_text_dir, "--data", tiny_captions_npz, "--image", str(img),
                 "--prompt", "a dark ring", "--method", "dtrak", "--runs", str(runs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "pixel UNet2DModel" in err[0]
    assert not runs.exists() or not any(runs.iterdir())


def test_dtrak_lambda_grid_changes_only_the_solve(tiny, tmp_path, monkeypatch):
    """A λ grid (the exemplar benchmark's development choice) costs one feature pass, one query gradient
    and one Gram matrix: z = Φ·φ(q) is λ-free, and every λ's scores equal the plain per-λ query_scores."""
    model, data = tiny
    o = dtrak.DTrakOptions(timesteps=1, dim=16, seed=2, block=8)
    calls = dict(grad=0, gram=0)
    item_gradients, gram_matrix = dtrak.item_gradients, dtrak.gram_matrix

    def counting_grads(*a, **k):
        calls["grad"] += 1
        return item_gradients(*a, **k)

    def counting_gram(*a, **k):
        calls["gram"] += 1
        return gram_matrix(*a, **k)
    monkeypatch.setattr(dtrak, "item_gradients", counting_grads)
    monkeypatch.setattr(dtrak, "gram_matrix", counting_gram)
    feats = dtrak.training_features(model, data, "mean-squared-l2-norm", o, str(tmp_path))
    batches = calls["grad"]                                   # the one feature pass
    x, label = data.tensor([3])[0], int(data.labels[3])
    z = dtrak.query_kernel_input(model, feats, x, label)
    grid = [1e-2, 1.0, 1e2, 1e4]
    got = [dtrak.solve_scores(feats, z, lam) for lam in grid]
    assert calls == dict(grad=batches + 1, gram=1)            # one query gradient, one Gram for four λ
    phi = np.asarray(feats.phi, np.float64)
    for lam, s in zip(grid, got):                             # the kernel by hand, per λ
        np.testing.assert_allclose(s, np.linalg.solve(phi @ phi.T + lam * np.eye(len(phi)), z), rtol=1e-6,
                                   atol=1e-9 * np.abs(s).max())
        np.testing.assert_allclose(dtrak.query_scores(model, feats, x, label, lam), s, rtol=1e-6)
    assert not np.allclose(got[0] / np.abs(got[0]).max(), got[-1] / np.abs(got[-1]).max())   # λ matters here
