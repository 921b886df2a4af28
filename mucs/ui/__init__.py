"""The Gradio app's views (the UI layer, on top of mucs.explorer): `build(ex)` makes the page for an
Explorer, `launch` serves it. app.py is the command that starts it."""
from mucs.ui.common import HEAVY
from mucs.ui.page import build
from mucs.ui.server import LoginWall, launch
from mucs.ui.settings_panel import SETTING_WIDGETS, setting_keys

__all__ = ["HEAVY", "SETTING_WIDGETS", "LoginWall", "build", "launch", "setting_keys"]
