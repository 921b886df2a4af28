"""The command line: `mucs [-v] {train,generate,attribute,report,evaluate} ...` (also `python -m mucs`).
Errors: one line, exit status 2. One module per command; the attribute options are generated from
mucs.settings.Settings."""
import argparse
import json

from mucs.cli import attribute, generate, train
from mucs.cli.common import check_numbers, error, setup_logging
from mucs.errors import MucsError


def build_parser() -> argparse.ArgumentParser:
    """The `mucs` parser: each command's options (attribute's generated from mucs.settings.Settings)."""
    from mucs import __version__
    ap = argparse.ArgumentParser(prog="mucs", description="MUCS training-data attribution for diffusion models")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="log what the library does (fallbacks, cache misses and rebuilds, dropped settings) to "
                         "stderr; -vv for debug detail")
    ap.add_argument("--version", action="version", version=f"mucs {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    train.add_parser(sub)
    generate.add_parser(sub)
    attribute.add_parser(sub)
    try:  # the counterfactual evaluation lives in its own module
        from mucs.evaluation.cli import add_parser as add_evaluate_parser
    except ImportError as e:   # still a command: running it is one error line naming what is missing
        add_evaluate_parser = None   # type: ignore[assignment]
        _add_unavailable_evaluate(sub, e)
    if add_evaluate_parser is not None:
        add_evaluate_parser(sub)
        ev = sub.choices.get("evaluate")
        if ev is not None and "--force" not in ev._option_string_actions:
            ev.add_argument("--force", action="store_true",
                            help="replace an existing --out even when it is not an evaluate results JSON")
            ev.set_defaults(fn=_guard_evaluate_out(ev.get_default("fn")))
    from mucs.explorer.report_command import add_parser as add_report_parser   # python -m mucs report RUN_DIR --out report.html
    add_report_parser(sub)
    return ap


def _is_evaluate_json(path):
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "methods" in d and "scale" in d


def _guard_evaluate_out(fn):
    """evaluate --out: an existing file is replaced only when it holds evaluate's results (or --force)."""
    def cmd(a):
        from mucs.cache import check_out_file
        if a.out is not None:
            check_out_file(a.out, force=a.force, ours=_is_evaluate_json)
        return fn(a)
    return cmd


def _add_unavailable_evaluate(sub, error: ImportError) -> None:
    """`evaluate` when its module cannot be imported: it takes any arguments and exits 2 with an error
    line naming the missing module, rather than disappearing from the CLI."""
    missing = error.name or "a module it needs"

    def unavailable(a):
        raise MucsError(f"the evaluate command is unavailable: importing it failed on {missing} ({error}); "
                        "install the project's requirements (pip install -r requirements.txt)")
    ev = sub.add_parser("evaluate", help=f"(unavailable: {missing} failed to import)", add_help=False,
                        prefix_chars="+")          # no options: every argument is taken as is
    ev.add_argument("args", nargs="*")
    ev.set_defaults(fn=unavailable)


def main(argv=None) -> int:
    """Run one command (`argv`, default sys.argv[1:]); returns the exit status: 0, 2 after a one-line
    error (bad input, a full disk), 1 after an unexpected one (-v shows its traceback)."""
    a = build_parser().parse_args(argv)
    undo_logging = setup_logging(a.verbose)
    try:
        check_numbers(a)
        a.fn(a)
    except MucsError as e:
        return error(str(e))
    except OSError as e:   # a disk filling, a file system refusing a write: its words, in one line
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return error(f"{e.strerror or e}{where}", verbose=a.verbose)
    except Exception as e:   # a bug: one line still (-v shows the traceback), not a wall of text
        return error(f"unexpected {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} "
                     "(please report it; -v shows the traceback)", verbose=a.verbose, status=1)
    finally:
        undo_logging()
    return 0
