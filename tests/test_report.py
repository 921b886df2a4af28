"""The self-contained HTML report (library and `python -m mucs report`), its SVG charts, and the
overlap/compare helpers — on a synthetic run, so no model is trained here."""
import json
import os
import re
import xml.dom.minidom
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import make_images
from mucs.explorer import compare
from mucs.explorer import svg
from mucs.method import overlap as ov
from mucs.__main__ import main
from mucs.method.attribute import Attribution
from mucs.sources.data import load_dataset
from mucs.explorer.report import render_report, report_for_dir


@pytest.fixture()
def run(tmp_path):
    """A stored run on a 32-image, 4-class training set, with the data it names."""
    images, labels = make_images()
    data_path = tmp_path / "data.npz"
    np.savez(data_path, images=images[..., 0], labels=labels, class_names=np.array(["a", "b", "c", "d"]))
    data = load_dataset(str(data_path))
    rng = np.random.default_rng(0)
    n = len(images)
    lo = rng.uniform(0.01, 0.1, n)
    lu = lo * rng.uniform(1.0, 20.0, n)
    scores = (lu - lo) / (lu + lo + 1e-3)
    top = np.argsort(-scores, kind="stable")[:5]
    levels = [dict(sigma=s, timestep=t, sigma_t=s * 1.01) for s, t in ((80.0, 990), (10.0, 700), (1.0, 400))]
    att = Attribution(scores=scores, top=top, loss_original=lo, loss_unlearned=lu, loss_null=1.05, steps=12,
                      converged=False, curve=[dict(step=i, loss_f=0.1 * i, loss_r=0.05) for i in range(13)],
                      stage_times=dict(original_losses=0.1, null_loss=0.0, unlearning=3.2, unlearned_losses=1.1,
                                       total=4.4),
                      settings=dict(noises=3, lr_factor=5, max_steps=12, top_k=5, tol=0.05, sigma_min=0.002),
                      query=dict(label=2, class_name="c", conversions=["resized 28x28 to 8x8"], source="upload x.png"),
                      query_image=images[7], labels=labels,
                      info=dict(model="/m/tiny", model_fingerprint="f" * 64, data=str(data_path),
                                data_fingerprint=data.fingerprint(), num_train=n, noise_levels=levels,
                                unlearning_lr=4e-4, mucs_version="0.1.0"))
    run_dir = tmp_path / "run"
    att.save(str(run_dir))
    return att, str(run_dir), data, str(data_path)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "poster", "data") and v:
                self.refs.append((tag, k, v))


def test_report_is_self_contained_and_complete(run):
    att, _, data, _ = run
    text = render_report(att, "r1", dict(created="2026-11-30T12:00:00+00:00", kind="upload"), data)
    p = _Refs()
    p.feed(text)
    # nothing is fetched: every image is a data URI, no scripts, no links to other hosts
    assert p.refs and all(v.startswith("data:image/png;base64,") for _, _, v in p.refs)
    assert "script" not in p.tags and "link" not in p.tags
    assert not re.search(r"(src|href)=['\"]?https?:", text)
    # the top-k with rank, index, class and score, and the query
    for rank, i in enumerate(att.top, 1):
        assert f"#{rank} · {int(i)} · {data.class_name(att.labels[i])} · {att.scores[i]:.4f}" in text
    assert "alt='query image'" in text and "resized 28x28 to 8x8" in text
    # the four plots as inline SVG, each well-formed, with a caption that names the axes
    figs = re.findall(r"<figure id='plot-(\w+)'>(<svg.*?</svg>)", text, re.S)
    assert [k for k, _ in figs] == ["hist", "scatter", "curve", "classes"]
    for _, s in figs:
        xml.dom.minidom.parseString(s)
    # settings, timings, noise levels, fingerprints, warnings, explanation
    for needle in ("lr_factor", "max_steps", "unlearning", "3.2 s", "Noise levels (K = 3)", "f" * 64,
                   att.info["data_fingerprint"], "hit the step cap", "How to read this", "L<sub>null</sub>"):
        assert needle in text, needle


def test_report_without_its_training_set_says_so(run, tmp_path):
    att, run_dir, _, data_path = run
    os.rename(data_path, str(tmp_path / "moved.npz"))
    text = report_for_dir(run_dir)
    assert "was not found" in text and "--data" in text and "#1 · " in text
    assert "data:image/png" in text        # the query is still there
    text = report_for_dir(run_dir, str(tmp_path / "moved.npz"))
    assert "was not found" not in text and "alt='training image" in text


def test_cli_report(run, tmp_path, capsys):
    att, run_dir, _, data_path = run
    out = tmp_path / "out" / "report.html"
    assert main(["report", run_dir, "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("<!doctype html>") and "MUCS report" in text and "alt='training image" in text
    assert main(["report", run_dir, "--out", str(out)]) == 0          # its own earlier report: replaced
    foreign = tmp_path / "notes.html"
    foreign.write_text("<p>mine</p>")
    capsys.readouterr()
    assert main(["report", run_dir, "--out", str(foreign)]) == 2       # someone else's file: refused
    assert "not written by mucs" in capsys.readouterr().err and foreign.read_text() == "<p>mine</p>"
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.html")]) == 2
    assert "no run folder" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
    other = tmp_path / "other.npz"
    images, labels = make_images(seed=5)
    np.savez(other, images=images[..., 0], labels=labels)
    assert main(["report", run_dir, "--data", str(other), "--out", str(tmp_path / "y.html")]) == 2
    assert "not the training set" in capsys.readouterr().err and not (tmp_path / "y.html").exists()


def test_svg_charts_are_well_formed_and_survive_odd_input():
    rng = np.random.default_rng(1)
    charts = [svg.histogram(rng.normal(size=200), vline=(0.5, "cut")),
              svg.histogram([1.0, 1.0, 1.0]), svg.histogram([]),
              svg.scatter(rng.random(50), rng.random(50), colour=rng.random(50), highlight=[1, 2], log_x=True,
                          log_y=True, diagonal=True, colour_label="skew"),
              svg.scatter([0, -1], [0, -1], log_x=True, log_y=True),
              svg.lines([dict(name="a<b", x=[1, 2, 3], y=[0.1, 0.2, 0.15])], hlines=[(0.3, "L_null", svg.GREY)],
                        log_x=True, log_y=True),
              svg.lines([]), svg.bars(["a", "b"], [2, 0], expected=[1, 1], highlight=0)]
    for c in charts:
        xml.dom.minidom.parseString(c)
    assert "a&lt;b" in charts[5] and "no values" in charts[2]


def test_recurring_means_in_two_or_more_sets():
    sets = [[1, 2, 3], [3, 4], [5, 3, 4], [9]]
    assert ov.recurring(sets) == [(3, 3), (4, 2)]
    assert ov.recurring(sets, min_count=1)[-1] == (9, 1)
    assert ov.shared_counts(sets) == {3: 3, 4: 2}
    assert ov.recurring([[1, 2], [3]]) == []


def test_compare_grid_and_query_ids():
    assert compare.query_id("a") == compare.query_id("a") != compare.query_id("b")
    imgs = np.zeros((4, 8, 8, 1), np.uint8)
    html = compare.grid_html([dict(title="MUCS", subtitle="x", items=[0, 2], scores={0: 0.5, 2: "d² 3"},
                                   mark={2: ("s", "in 2 runs")}, query=imgs[0])], imgs, lambda i: f"cls{i}",
                             key="<span>k</span>")
    assert html.count("<img") == 3 and 'data-index="2"' in html and "in 2 runs" in html and "cls2" in html
    assert "d² 3" in html and "0.5" in html and "http" not in html.replace("http://www.w3.org", "")
    ranks = compare.ranks_of(np.array([0.1, 0.9, 0.9, 0.3]))
    assert list(ranks) == [4, 1, 2, 3]


def test_result_json_of_the_fixture_is_what_the_report_reads(run):
    _, run_dir, _, _ = run
    r = json.load(open(os.path.join(run_dir, "result.json")))
    assert r["noise_levels"][0]["timestep"] == 990
