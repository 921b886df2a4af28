"""The explorer's back end, which the app, the CLI and the HTTP API call: `state` (the `Explorer`:
one model, its training set, jobs and runs), `history` (the run store), `plots`, `compare`
(methods side by side), `why` (one item's evidence), `diagnostics` (ties and saturation in
words), `report` (a self-contained HTML report, with `svg` charts) and `texts` (the app's
explanations). Built on `mucs.method` and `mucs.sources`."""
from .state import Explorer  # noqa: F401
