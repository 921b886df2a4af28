"""The counterfactual evaluation (`python -m mucs evaluate`); the code lives in `mucs.evaluation`:
config → plan/steps → run (serial or Ray tasks) → summary → report. This module keeps the old
import path."""
from .evaluation import (DEFAULT_METHODS, GROUPS, METRICS, PRESETS, EvalConfig, Evaluation, RayEngine,  # noqa: F401
                         SerialEngine, balanced_subset, make_engine, preset, train_without)
from .evaluation.cli import add_parser, cmd_evaluate  # noqa: F401
from .evaluation.report import ci_table, markdown_table, overlap_table, verdict  # noqa: F401
