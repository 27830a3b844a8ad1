"""The gate's decision on the page: one bar per site, the verdict in plain words, the gate map switch.

Every probability is text in the page (`data-site`, `data-probability` on each bar), not only a
drawing, so a screen reader, a copy-paste or a test reads the engine's numbers exactly.
"""

from __future__ import annotations

from typing import Any

from trame.widgets import html
from trame.widgets.vuetify3 import VSwitch
from UHarmonySlicerLib.gate_display import unfamiliar_message

from UHarmonyLib.commands.segment import site_color  # the gate map's colour of each site


def gate_rows(gate: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per site in the model's order: name, probability, whether chosen, its gate-map colour."""
    return [
        {"site": site, "probability": float(p), "chosen": site == gate.get("chosen"), "color": site_color(i)}
        for i, (site, p) in enumerate(gate["sites"].items())
    ]


def gate_verdict(gate: dict[str, Any]) -> str:
    """The decision in one sentence; the unfamiliar-case warning is separate (`unfamiliar_message`)."""
    chosen = gate.get("chosen")
    p = float(gate["sites"].get(chosen, 0.0))
    if gate.get("site_given"):
        return f"Site {chosen} was named for this case; the gate did not choose."
    if gate.get("familiar") is None:
        return f"The case looks most like site {chosen} ({p:.0%}); the model cannot check how familiar it is."
    if gate.get("familiar"):
        return f"The case looks like site {chosen} ({p:.0%}); the model knows this kind of image."
    return f"The case looks most like site {chosen} ({p:.0%}), but not enough like any site the model knows."


def gate_state(gate: dict[str, Any] | None, has_map: bool) -> dict[str, Any]:
    """The page's gate entries for a decision (None: no segmentation yet)."""
    if gate is None:
        return {"uh_gate_rows": [], "uh_gate_verdict": "", "uh_gate_warning": "", "uh_has_gate_map": False}
    return {
        "uh_gate_rows": gate_rows(gate),
        "uh_gate_verdict": gate_verdict(gate),
        "uh_gate_warning": unfamiliar_message(gate),
        "uh_has_gate_map": has_map,
    }


def build_gate_panel() -> None:
    """The bars, verdict, warning and gate-map switch, bound to the `uh_gate_*` state."""
    with html.Div(id="gate", v_if=("uh_gate_rows.length",), classes="mt-2"):
        html.Div("Which hospital the case resembles (the model's gate)", classes="text-subtitle-2 mb-1")
        with html.Div(
            v_for="row in uh_gate_rows",
            key="row.site",
            classes="gate-bar d-flex align-center text-body-2",
            raw_attrs=[':data-site="row.site"', ':data-probability="row.probability"', ':data-chosen="row.chosen"'],
        ):
            html.Span(
                style=("{ background: row.color, width: '10px', height: '10px', display: 'inline-block' }",),
                classes="mr-1",
            )
            html.Span(
                "{{ row.site }}",
                classes=("row.chosen ? 'font-weight-bold' : ''",),
                style="width: 45%; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;",
            )
            with html.Div(style="flex: 1; height: 10px; background: rgba(128,128,128,0.3);", classes="mx-1"):
                html.Div(
                    style=(
                        "{ width: (100 * row.probability) + '%', height: '100%', "
                        "background: row.chosen ? '#4caf50' : '#90a4ae' }",
                    )
                )
            html.Span("{{ row.probability.toFixed(3) }}", classes="gate-probability", style="width: 3.5em;")
        html.Div("{{ uh_gate_verdict }}", id="gate-verdict", classes="text-body-2 mt-1")
        html.Div(
            "{{ uh_gate_warning }}",
            id="gate-warning",
            v_if=("uh_gate_warning",),
            classes="text-body-2 mt-1 text-error font-weight-bold",
        )
        VSwitch(
            id="gate-map",
            v_model=("uh_gate_map", False),
            label="Show the gate map: the most likely site of each region, in the colours above",
            disabled=("!uh_has_gate_map",),
            density="compact",
            hide_details=True,
            color="primary",
        )
