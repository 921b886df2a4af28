"""The suite's own rules: a missing prerequisite skips on a developer's machine but fails in CI."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(tmp_path, require: bool):
    (tmp_path / "test_needs.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom conftest import need\n\n"
        "def test_x():\n    need(False, 'chromium is missing')\n" % HERE)
    env = dict(os.environ, MUCS_REQUIRE_ALL="1" if require else "0")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_needs.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_prerequisite_skips_locally_and_fails_in_ci(tmp_path):
    local = _run(tmp_path, require=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout
    ci = _run(tmp_path, require=True)
    assert ci.returncode == 1 and "MUCS_REQUIRE_ALL=1" in ci.stdout and "1 failed" in ci.stdout
