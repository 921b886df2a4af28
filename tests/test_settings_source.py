"""One source of truth for settings (mucs/settings.py): every Settings field reachable from the
CLI, the app's widgets checked against the fields, clear errors for unknown keys and wrong types,
logging of fallbacks, and one run format for CLI and app (the packaging files: tests/test_packaging.py)."""
import argparse
import ast
import json
import logging
import os
import re
import sys
from dataclasses import fields

import numpy as np
import pytest

from mucs.__main__ import build_parser, main
from mucs.errors import MucsError
from mucs.settings import (APP_EXCLUDED, CLI_SETTINGS_ONLY, HELP, Settings, add_cli_options, choices_for, cli_overrides,
                           field_types, flag_for, load_settings_json)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = [f.name for f in fields(Settings)]


def _sample(name):
    """A value of the field's type that differs from its default, and how to say it on the command line."""
    t, d = field_types()[name], Settings().to_dict()[name]
    if t is bool:
        return (not d), []
    if t is tuple:
        return ("bias", "norm"), ["bias,norm"]
    if t is str:
        v = next(c for c in choices_for(name) if c != d)
        return v, [v]
    if t is int:
        return d + 3, [str(d + 3)]
    v = 0.125 if d != 0.125 else 0.25
    return v, [str(v)]


def _attribute_args(argv):
    return build_parser().parse_args(["attribute"] + argv)


def test_every_field_has_help_and_is_reachable_by_flag_or_settings_json():
    assert set(HELP) == set(FIELDS), "every Settings field needs a help text in mucs.settings.HELP"
    assert set(CLI_SETTINGS_ONLY) <= set(FIELDS)
    added = add_cli_options(argparse.ArgumentParser())
    assert set(added) | set(CLI_SETTINGS_ONLY) == set(FIELDS) and not set(added) & set(CLI_SETTINGS_ONLY)
    for name in FIELDS:
        value, words = _sample(name)
        # through --settings JSON: every field
        got = cli_overrides(_attribute_args(["--settings", json.dumps({name: list(value) if isinstance(value, tuple)
                                                                        else value})]))
        assert got == {name: value}, name
        assert getattr(Settings().replace(**got), name) == value, name
        # through its own flag: every field but the JSON-only ones
        if name in CLI_SETTINGS_ONLY:
            with pytest.raises(SystemExit):
                _attribute_args([flag_for(name)] + words)
            continue
        got = cli_overrides(_attribute_args([flag_for(name)] + words))
        assert got == {name: value}, name
    # flags win over --settings; nothing given gives nothing
    assert cli_overrides(_attribute_args(["--settings", '{"noises": 4, "lam": 0.5}', "--noises", "6"])) == \
        dict(noises=6, lam=0.5)
    assert cli_overrides(_attribute_args([])) == {}


def test_settings_tables_are_derived_from_one_declaration_per_field():
    """Each field declares its help, range or choices and its place in the app once (mucs.settings.setting);
    HELP, RANGES, the app's widgets, PAPER_KEYS, SCORING_ONLY ... are derived from it, and the code reads
    those derived tables, not copies of its own."""
    import mucs.settings as S
    from mucs.explorer import state, stored_runs
    from mucs.method import attribute, fragile
    for f in fields(Settings):
        m = f.metadata
        assert m.get("help"), f"{f.name}: declared without a help text"
        assert ("app" in m) != ("app_hidden" in m), f"{f.name}: declare either its app widget or why it has none"
        assert "choices" not in m or f.default in m["choices"], f.name
        assert "range" not in m or f.default is None or f.name in S.CHOICES or \
            S.check_value(f.name, f.default) is None, f.name
    t = S.tables()
    assert (S.HELP, S.FLAG_NAMES, S.CLI_SETTINGS_ONLY, S.RANGES, S.CHOICES, S.APP_EXCLUDED, S.APP_WIDGETS,
            S.PAPER_KEYS, S.FLOAT_TOLERANCE_ONLY) == \
        (t["HELP"], t["FLAG_NAMES"], t["CLI_SETTINGS_ONLY"], t["RANGES"], t["CHOICES"], t["APP_EXCLUDED"],
         t["APP_WIDGETS"], t["PAPER_KEYS"], t["FLOAT_TOLERANCE_ONLY"])
    assert set(S.SCORING_ONLY) == set(t["SCORING_ONLY_DECLARED"]) | set(t["FLOAT_TOLERANCE_ONLY"])
    assert set(S.HELP) == set(FIELDS) and set(S.APP_WIDGETS) | set(S.APP_EXCLUDED) == set(FIELDS)
    assert {"noises", "lam", "bounded", "sigma_min"} <= set(S.PAPER_KEYS) and "top_k" not in S.PAPER_KEYS
    assert {"top_k", "normalised", "eval_batch_size"} <= set(S.SCORING_ONLY) and "lam" not in S.SCORING_ONLY
    places = [(w.row, w.col) for w in S.APP_WIDGETS.values()]
    assert places == sorted(places) and len(set(places)) == len(places), "two app widgets in one place"
    assert len({w.elem_id for w in S.APP_WIDGETS.values()}) == len(S.APP_WIDGETS)
    assert state.USER_SETTINGS == tuple(S.APP_WIDGETS) and stored_runs.PAPER_KEYS is S.PAPER_KEYS
    assert attribute.SCORING_ONLY is S.SCORING_ONLY and fragile.FLOAT_TOLERANCE_ONLY is S.FLOAT_TOLERANCE_ONLY
    assert _app_setting_keys() == set(S.APP_WIDGETS)


def test_a_new_setting_is_declared_in_one_place():
    """A field added with `setting(...)` gets its flag, help, range, place in the paper's settings and app
    widget from that one declaration."""
    from dataclasses import make_dataclass
    import mucs.settings as S
    gamma = S.setting(0.5, "γ, a new knob", range=(0, 1, True, True), paper=True,
                      app=S.Widget(1, 9, "γ", "set-gamma"))
    chunk = S.setting(4, "a machine knob", flag="--knob", range=(1, S.INF, True, False), float_tolerance=True,
                      app_hidden="a machine choice")
    Ext = make_dataclass("Ext", [("gamma", float, gamma), ("knob", int, chunk)], bases=(Settings,))
    t = S.tables(Ext)
    assert t["HELP"]["gamma"] == "γ, a new knob" and t["RANGES"]["gamma"] == (0, 1, True, True)
    page = list(t["APP_WIDGETS"])              # row 1, after the four checkboxes, before row 2
    assert "gamma" in t["PAPER_KEYS"] and page[page.index("bounded"):page.index("sigma_min")] == \
        ["bounded", "retain", "consistent_noise", "normalised", "gamma"]
    assert t["APP_EXCLUDED"]["knob"] == "a machine choice" and "knob" in t["FLOAT_TOLERANCE_ONLY"]
    assert t["FLAG_NAMES"] == dict(S.FLAG_NAMES, knob="--knob")
    parser = argparse.ArgumentParser()
    added = add_cli_options(parser, cls=Ext)
    assert added[-2:] == ["gamma", "knob"] and set(added) >= set(add_cli_options(argparse.ArgumentParser()))
    args = parser.parse_args(["--gamma", "0.25", "--knob", "8"])
    assert (args.gamma, args.knob) == (0.25, 8)
    assert "γ, a new knob (default 0.5; in [0, 1])" in parser.format_help()


def test_no_module_keeps_its_own_list_of_setting_names():
    """Lists of setting names live in the declarations (mucs/settings.py), not in parallel tables elsewhere.
    Allowed: plan.KEY_SETTINGS, the settings the evaluation's attribution keys held at one commit (frozen
    history, not a declaration)."""
    names = set(FIELDS)
    allowed = {("mucs/evaluation/plan.py", "KEY_SETTINGS")}
    paths = ["app.py"] + [os.path.relpath(os.path.join(r, f), ROOT) for r, _, fs in os.walk(os.path.join(ROOT, "mucs"))
                          for f in fs if f.endswith(".py")]
    found = []
    for path in paths:
        if path == os.path.join("mucs", "settings.py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
        targets = {id(n.value): n.targets[0].id for n in ast.walk(tree)
                   if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                elts = node.elts
            elif isinstance(node, ast.Dict):
                elts = [k for k in node.keys if k is not None]
            else:
                continue
            got = [e.value for e in elts if isinstance(e, ast.Constant) and e.value in names]
            if len(got) >= 3 and (path.replace(os.sep, "/"), targets.get(id(node))) not in allowed:
                found.append(f"{path}:{node.lineno} {got}")
    assert not found, f"declare these with the fields in mucs/settings.py and derive the table: {found}"


def test_existing_flag_names_are_kept():
    """The flags README and the tests use stay as they were when the parser became generated."""
    opts = build_parser()._subparsers._group_actions[0].choices["attribute"]._option_string_actions
    for flag in ("--noises", "--top-k", "--seed", "--lam", "--tol", "--max-steps", "--noise-fraction", "--batch-size",
                 "--sigma-min", "--sigma-max", "--train-noise", "--loss-weighting", "--lr-factor", "--frozen",
                 "--unbounded", "--no-retain", "--fresh-noise", "--unnormalised", "--paper-settings", "--fast", "--train-lr",
                 "--image-column", "--label-column", "--list-classes", "--settings", "--out", "--runs", "--cache-dir"):
        assert flag in opts, flag
    assert opts["--unbounded"].dest == "bounded" and opts["--unlearning-lr"].dest == "lr"


def _app_setting_keys():
    """The setting names the app's settings widgets edit (app.SETTING_WIDGETS: the page gathers them
    into the one settings dict that /attribute takes)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import app
    keys = app.setting_keys()
    assert len(keys) == len(set(keys)), "a setting has two widgets in app.SETTING_WIDGETS"
    return set(keys)


def test_app_widgets_cover_every_user_facing_setting():
    keys = _app_setting_keys()
    assert keys, "app.SETTING_WIDGETS lists no settings: update this test"
    assert keys <= set(FIELDS), f"app.py passes unknown settings: {keys - set(FIELDS)}"
    missing = set(FIELDS) - keys - set(APP_EXCLUDED)
    assert not missing, f"settings neither shown in the app nor listed in mucs.settings.APP_EXCLUDED: {missing}"
    assert not keys & set(APP_EXCLUDED), f"shown in the app but listed as excluded: {keys & set(APP_EXCLUDED)}"
    from mucs.explorer.state import USER_SETTINGS
    assert keys <= set(USER_SETTINGS) <= set(FIELDS)


@pytest.mark.parametrize("text, expect", [
    ('{"noise": 4}', "unknown setting 'noise' (did you mean 'noises'?)"),
    ('{"noises": "x"}', "noises must be an integer"),
    ('{"bounded": 1}', "bounded must be true or false"),
    ('{"lam": "0.2"}', "lam must be a number"),
    ('[1, 2]', "must be a JSON object"),
    ('{bad', "neither a readable JSON file nor a JSON object"),
])
def test_settings_json_errors_are_one_clear_line(text, expect, capsys, tmp_path):
    before = set(os.listdir(tmp_path))
    # checked before anything is loaded: no model, no data, no image needed
    assert main(["attribute", "--model", str(tmp_path / "nope"), "--settings", text]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expect in err, err
    assert set(os.listdir(tmp_path)) == before


def test_settings_json_file_and_wrapper(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"settings": {"noises": 4, "frozen": ["bias"]}, "why": "a note"}))
    assert load_settings_json(str(f)) == dict(noises=4, frozen=("bias",))
    f.write_text("{not json")
    with pytest.raises(MucsError, match="cannot read"):
        load_settings_json(str(f))
    f.write_text('{"noises": 4.5}')
    with pytest.raises(MucsError, match=r"--settings .*s\.json: noises must be an integer"):
        load_settings_json(str(f))


@pytest.mark.parametrize("body, expect", [("{not json", "cannot read"), ("[1]", "must be a JSON object"),
                                          ('{"settings": {"noise": 4}}', "unknown setting 'noise'"),
                                          ('{"settings": {"tol": "low"}}', "tol must be a number"),
                                          ('{"settings": [1]}', "must be a JSON object")])
def test_malformed_mucs_settings_json_is_a_clear_error(tmp_path, body, expect):
    from mucs.defaults import RECOMMENDED, settings_for
    (tmp_path / RECOMMENDED).write_text(body)
    with pytest.raises(MucsError, match=re.escape(expect)):
        settings_for(str(tmp_path))
    (tmp_path / RECOMMENDED).write_text('{"settings": {"noises": 4}}')
    assert settings_for(str(tmp_path), top_k=3) == Settings(noises=4, top_k=3)


def test_settings_profiles_recommended_fast_and_paper(tmp_path):
    """recommended = paper defaults + the folder's "settings"; fast = those + the folder's "fast" (else
    mucs.defaults.FAST); paper = the paper's defaults alone; explicit overrides always win."""
    from mucs.defaults import FAST, RECOMMENDED, settings_for
    (tmp_path / RECOMMENDED).write_text('{"settings": {"noises": 4, "lr_factor": 5}}')
    assert settings_for(str(tmp_path)) == Settings(noises=4, lr_factor=5.0)
    assert settings_for(str(tmp_path), "paper") == Settings()
    assert settings_for(str(tmp_path), "fast") == Settings(noises=4, lr_factor=5.0).replace(**FAST)
    assert settings_for(str(tmp_path), "fast", top_k=3).top_k == 3
    (tmp_path / RECOMMENDED).write_text('{"settings": {"noises": 4}, "fast": {"screen_noises": 1}}')
    f = settings_for(str(tmp_path), "fast")
    assert f.screen_noises == 1 and f.batch_size == Settings().batch_size and f.noises == 4
    (tmp_path / RECOMMENDED).write_text('{"settings": {}, "fast": {"screen_noise": 1}}')
    with pytest.raises(MucsError, match="unknown setting 'screen_noise'"):
        settings_for(str(tmp_path), "fast")
    with pytest.raises(MucsError, match="unknown settings profile 'quick'"):
        settings_for(str(tmp_path), "quick")


def test_embedded_default_fast_profile_is_the_measured_one():
    """The fast profile docs/benchmarks.md's speed table measured: B 50, lr ÷ 2.5, screening 2 levels / 50 items."""
    from mucs.defaults import DEFAULT_MODEL, settings_for
    rec, fast = settings_for(DEFAULT_MODEL), settings_for(DEFAULT_MODEL, "fast")
    assert (fast.batch_size, fast.lr_factor, fast.screen_noises, fast.screen_keep) == (50, 2.5, 2, 50)
    assert fast.replace(batch_size=rec.batch_size, lr_factor=rec.lr_factor, screen_noises=0, screen_keep=100) == rec


def test_dropped_settings_keys_are_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="mucs"):
        s = Settings.from_dict(dict(noises=4, from_a_newer_version=1))
    assert s.noises == 4 and "from_a_newer_version" in caplog.text


def test_verbose_sets_up_logging_and_undoes_it(capsys, tmp_path, tiny_npz):
    logger = logging.getLogger("mucs")
    level, handlers = logger.level, list(logger.handlers)
    # a logged fallback reaches stderr with --verbose: the data source's decoding line (info)
    assert main(["--verbose", "attribute", "--model", str(tmp_path / "nope"), "--data", tiny_npz,
                 "--list-classes"]) == 2
    assert logger.level == level and logger.handlers == handlers      # main() leaves the caller's logging alone
    err = capsys.readouterr().err
    assert "error: " in err
    from mucs.__main__ import setup_logging
    undo = setup_logging(1)
    try:
        from mucs.sources.data import load_dataset
        load_dataset(tiny_npz)
    finally:
        undo()
    err = capsys.readouterr().err
    assert "INFO mucs: dataset" in err and "32 images 8x8x1 loaded" in err
    undo = setup_logging(0)                                            # default: warnings only
    try:
        load_dataset(tiny_npz)
        Settings.from_dict(dict(unknown_key=1))
    finally:
        undo()
    err = capsys.readouterr().err
    assert "decoded" not in err and "warning: ignoring unknown setting(s) unknown_key" in err


# --- one run format ---------------------------------------------------------------------------------
def _fake_attribution(model_path, data_path, n=6):
    from mucs.method.attribute import Attribution
    rng = np.random.default_rng(0)
    scores = rng.normal(size=n)
    return Attribution(scores=scores, top=np.argsort(-scores)[:3], loss_original=rng.random(n),
                       loss_unlearned=rng.random(n), loss_null=1.0, steps=2, converged=False,
                       curve=[dict(step=0, loss_f=0.1, loss_r=0.1)], stage_times=dict(total=1.0),
                       settings=Settings().to_dict(), query=dict(label=1, class_name="b", conversions=[], source="q.png"),
                       query_image=np.zeros((4, 4, 1), np.uint8), labels=np.arange(n) % 2,
                       info=dict(model=model_path, data=data_path, data_fingerprint="x"))


def test_write_run_is_the_store_format_and_paths_in_the_repo_are_relative(tmp_path):
    from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL, REPO, shown_path
    from mucs.explorer.history import RunStore, is_run, write_run
    att = _fake_attribution(DEFAULT_MODEL, str(tmp_path / "mine.npz"))
    root = tmp_path / "runs"
    path = write_run(att, str(root / "cli-run"), dict(kind="cli", model=DEFAULT_MODEL, data=DEFAULT_DATA))
    assert is_run(path)
    store = RunStore(str(root), examples=None)
    (m,) = store.list()
    assert m["id"] == "cli-run" and m["kind"] == "cli" and m["top_k"] == 3 and m["class_name"] == "b"
    assert m["model"] == os.path.relpath(DEFAULT_MODEL, REPO) and not os.path.isabs(m["data"])
    back = store.load("cli-run")
    assert np.allclose(back.scores, att.scores) and list(back.top) == list(att.top)
    assert back.info["model"] == shown_path(DEFAULT_MODEL) == os.path.join("assets", "fashion16")
    assert back.info["data"] == str(tmp_path / "mine.npz")          # outside the repository: absolute
    # a second write replaces the run; a foreign folder is refused
    write_run(att, path)
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "ch1.tex").write_text("x")
    with pytest.raises(MucsError, match="does not hold a MUCS run"):
        write_run(att, str(tmp_path / "thesis"))
    # the app's store writes the same layout, also with repository-relative paths
    rid = store.save(att, dict(kind="upload", model=DEFAULT_MODEL))
    assert sorted(os.listdir(store.path(rid))) == sorted(os.listdir(path))
    assert store.meta(rid)["model"] == os.path.join("assets", "fashion16")


def test_one_default_runs_dir():
    import mucs.defaults
    import mucs.explorer.history
    assert mucs.explorer.history.default_runs_dir is mucs.defaults.default_runs_dir
    assert mucs.explorer.history.REPO == mucs.defaults.REPO
    src = open(os.path.join(ROOT, "mucs", "explorer", "history.py")).read()
    assert "def default_runs_dir" not in src


def test_committed_results_hold_no_absolute_paths():
    bad = []
    for folder in ("benchmarks/results", "assets"):
        for r, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".json"):
                    text = open(os.path.join(r, f), encoding="utf-8").read()
                    if re.search(r'"(/(work|home|tmp|root|Users)/|[A-Z]:\\\\)', text):
                        bad.append(os.path.relpath(os.path.join(r, f), ROOT))
    assert not bad, f"absolute paths in committed results: {bad}"
