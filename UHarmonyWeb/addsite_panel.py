"""The add-site panel: name the site, save corrected cases into its set, train, watch the loss.

The loss curve is the desktop module's TrainingCurve (table and chart nodes in the scene, so it is
saved with the scene); the page draws the same points as an SVG line and lists them as numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trame.widgets import html
from trame.widgets.vuetify3 import VBtn, VProgressLinear, VTextField
from UHarmonySlicerLib.addsite import TrainingCurve

PLOT_WIDTH, PLOT_HEIGHT, MARGIN = 300, 90, 4


def loss_points(curve: TrainingCurve) -> list[list[float]]:
    """The curve's (step, loss) points so far."""
    table = curve.loss.GetTable()
    steps, losses = table.GetColumnByName("step"), table.GetColumnByName("loss")
    return [[float(steps.GetValue(i)), float(losses.GetValue(i))] for i in range(table.GetNumberOfRows())]


def plot_xy(points: list[list[float]], total_steps: int) -> list[list[float]]:
    """Pixel positions in the plot: steps 0..total across, loss from 0 (bottom) to the highest loss (top)."""
    top = max((loss for _, loss in points), default=1.0) or 1.0
    width, height = PLOT_WIDTH - 2 * MARGIN, PLOT_HEIGHT - 2 * MARGIN
    return [
        [round(MARGIN + width * step / max(total_steps, 1), 1), round(MARGIN + height * (1 - loss / top), 1)]
        for step, loss in points
    ]


def build_addsite_panel(save_case: Callable[[], Any], add_site: Callable[[], Any]) -> None:
    """Site name, the set's size, save and train buttons, progress and the loss plot (`uh_set_*`, `uh_addsite_*`)."""
    VTextField(
        id="site-name",
        v_model=("uh_site_name", ""),
        label="New site (hospital) name",
        density="compact",
        hide_details=True,
        classes="mb-2",
    )
    VBtn(
        "Save corrected case to this site's set",
        id="save-case",
        click=save_case,
        disabled=("!uh_can_save",),
        block=True,
        variant="tonal",
        classes="mb-1",
    )
    html.Div(
        "{{ uh_set_text }}",
        id="set-status",
        raw_attrs=[':data-cases="uh_set_cases"'],
        classes="text-body-2 mb-2",
    )
    VTextField(
        id="addsite-steps",
        v_model=("uh_steps", 150),
        type="number",
        label="Training steps",
        min=1,
        density="compact",
        hide_details=True,
        classes="mb-2",
    )
    VBtn(
        "{{ uh_addsite_text }}",
        id="add-site",
        click=add_site,
        disabled=("!uh_addsite_enabled",),
        block=True,
        color="primary",
    )
    VProgressLinear(
        id="addsite-progress",
        model_value=("uh_addsite_total ? 100 * uh_addsite_done / uh_addsite_total : 0",),
        height=14,
        classes="my-1",
        raw_attrs=[':data-done="uh_addsite_done"', ':data-total="uh_addsite_total"'],
    )
    with html.Div(v_if=("uh_loss.length",), classes="mt-1"):
        html.Div("Training loss", classes="text-caption")
        with html.Svg(
            id="loss-plot",
            width=PLOT_WIDTH,
            height=PLOT_HEIGHT,
            style="background: rgba(128,128,128,0.15);",
            raw_attrs=[':data-points="JSON.stringify(uh_loss)"'],
        ) as plot:
            plot.add_child(
                "<polyline :points=\"uh_loss_xy.map(p => p.join(',')).join(' ')\" "
                'fill="none" stroke="#ff9800" stroke-width="2" />'
            )
            plot.add_child('<circle v-for="p in uh_loss_xy" :cx="p[0]" :cy="p[1]" r="3" fill="#ff9800" />')
        html.Div(
            "{{ uh_loss.length }} point(s); last: step {{ uh_loss[uh_loss.length - 1][0] }}, "
            "loss {{ uh_loss[uh_loss.length - 1][1].toFixed(4) }}",
            id="loss-last",
            classes="text-caption",
        )
    html.Div("{{ uh_addsite_status }}", id="addsite-status", classes="text-body-2 mt-1")
