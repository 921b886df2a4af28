"""The page's settings widgets, as each mucs.Settings field declares its own (mucs.settings.APP_WIDGETS).

The page gathers them into ONE dict by field name, the `settings` parameter of /attribute and
/attribute_batch, so a widget added leaves the API's parameters as they are (tests/test_app.py checks
it; tests/test_settings_source.py checks the fields)."""
import gradio as gr

from mucs.settings import APP_WIDGETS, CHOICES, Widget, field_types


def _setting_widget(name: str, w: Widget):
    """The widget the field declares: a checkbox for a bool, a dropdown for choices, else a number box;
    made from (the settings in force, the training-set size)."""
    t = field_types()[name]
    if t is bool:
        return lambda s, n: gr.Checkbox(getattr(s, name), label=w.label, elem_id=w.elem_id)
    if name in CHOICES:
        return lambda s, n: gr.Dropdown(list(CHOICES[name]), value=getattr(s, name), label=w.label, elem_id=w.elem_id)
    return lambda s, n: gr.Number(getattr(s, name), precision=0 if t is int else None, label=w.label.format(n=n),
                                  elem_id=w.elem_id)


# row by row: (mucs.Settings field, its widget maker)
SETTING_WIDGETS = [[(name, _setting_widget(name, w)) for name, w in APP_WIDGETS.items() if w.row == row]
                   for row in sorted({w.row for w in APP_WIDGETS.values()})]


def setting_keys() -> list:
    """The Settings fields the page shows a widget for, in page order."""
    return [name for row in SETTING_WIDGETS for name, _ in row]


def settings_panel(settings, n_train: int) -> tuple:
    """The Settings accordion (the widgets, filled with `settings`) and the hidden JSON value that
    /attribute takes: the widgets' values by field name, gathered at each click (an API client passes
    its own dict; {} = the model's recommended settings)."""
    widgets = []
    with gr.Accordion("Settings", open=False, elem_id="settings"):
        for row in SETTING_WIDGETS:
            with gr.Row():
                widgets += [widget(settings, n_train) for _, widget in row]
    box = gr.JSON({}, label="settings", visible="hidden", elem_id="settings-json")
    return widgets, box


def on_settings(*values) -> dict:
    """The page's settings widgets gathered into the one settings dict /attribute takes (an emptied
    box is left out: the model's recommended value)."""
    return {k: v for k, v in zip(setting_keys(), values) if v is not None}
