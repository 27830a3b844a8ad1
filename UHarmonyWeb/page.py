"""The page: trame-slicer's viewer layout (views, tool bar, drawer) with UHarmony's panel and the Segment Editor.

Only widgets are built here; what they do is in UHarmonyWeb.app. Elements a test or a script
reads carry stable ids, and numbers are text in the page (see gate_panel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trame.widgets import html
from trame.widgets.vuetify3 import (
    VAlert,
    VBtn,
    VCheckbox,
    VDivider,
    VExpansionPanel,
    VExpansionPanels,
    VExpansionPanelText,
    VExpansionPanelTitle,
    VProgressLinear,
    VSelect,
    VTextField,
)
from trame_server import Server
from trame_slicer.app.ui import (
    ControlButton,
    LayoutButton,
    LoadVolumeUI,
    SegmentEditorUI,
    SegmentEditorUndoRedoUI,
    ViewerLayout,
)
from trame_slicer.core import LayoutManager

from UHarmonyWeb.addsite_panel import build_addsite_panel
from UHarmonyWeb.gate_panel import build_gate_panel

PANEL, EDITOR = "uharmony", "editor"  # the drawer's two tools


@dataclass
class Actions:
    """The server-side handlers the page's buttons call."""

    load_sample: Callable[[], Any]
    open_folder: Callable[[], Any]
    segment: Callable[[], Any]
    save_case: Callable[[], Any]
    add_site: Callable[[], Any]
    export_seg: Callable[[], Any]  # returns the file as a download attachment
    export_dicom: Callable[[], Any]  # returns the DICOM SEG zip as a download attachment


class Page:
    """Builds the page once; keeps the widgets the app logic connects to (editor, upload)."""

    def __init__(self, server: Server, layout_manager: LayoutManager, actions: Actions) -> None:
        self.server = server
        with ViewerLayout(server, title="UHarmony", is_drawer_visible=True) as self.layout:
            self.tools = self.layout.typed_state
            self.tools.data.active_tool = PANEL
            self.layout.drawer.width = 380
            with self.layout.appbar:
                self.upload = LoadVolumeUI()
            with self.layout.toolbar:
                self._tool_button(PANEL, "UHarmony: case, model, gate, add a site, export", "mdi-brain")
                self._tool_button(EDITOR, "Segment Editor: correct the segmentation", "mdi-brush")
                LayoutButton(classes="mt-1")
            with self.layout.drawer:
                with html.Div(v_if=(f"{self.tools.name.active_tool} === '{PANEL}'",), id="uharmony-panel"):
                    self._panel(actions)
                with html.Div(
                    v_if=(f"{self.tools.name.active_tool} === '{EDITOR}'",), id="editor-panel", style="height: 100%;"
                ):
                    html.Div(
                        "Segment first: the editor corrects the segmentation of the open case.",
                        v_if=("!uh_has_segmentation",),
                        classes="text-body-2 pa-3",
                    )
                    self.editor = SegmentEditorUI(v_show=("uh_has_segmentation",))
            with self.layout.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self.editor, v_if=(f"{self.tools.name.active_tool} === '{EDITOR}'",))
            with self.layout.footer:
                html.Span("{{ uh_probe }}", id="probe", classes="text-caption ml-4", raw_attrs=self._probe_attrs())
            with self.layout.content:
                layout_manager.initialize_layout_grid(self.layout)

    @staticmethod
    def _probe_attrs() -> list[str]:
        return [f':data-{key}="uh_probe_data.{key}"' for key in ("ras", "ijk", "segment")]

    def _tool_button(self, tool: str, name: str, icon: str) -> None:
        active = self.tools.name.active_tool
        ControlButton(
            name=name,
            icon=icon,
            id=f"tool-{tool}",
            click=f"{active} = '{tool}'; {self.tools.name.is_drawer_visible} = true",
            active=(f"{active} === '{tool}'",),
            classes="mt-1",
        )

    def _panel(self, actions: Actions) -> None:
        VAlert(
            "{{ uh_error }}",
            id="error",
            v_if=("uh_error",),
            type="error",
            density="compact",
            closable=True,
            click_close="uh_error = ''",
            classes="ma-2 text-body-2",
        )
        with VExpansionPanels(multiple=True, v_model=("uh_open_panels", [0, 1, 2, 3]), variant="accordion"):
            with VExpansionPanel():
                VExpansionPanelTitle("Case")
                with VExpansionPanelText():
                    self._case_section(actions)
            with VExpansionPanel():
                VExpansionPanelTitle("Model and segmentation")
                with VExpansionPanelText():
                    self._segment_section(actions)
                    build_gate_panel()
            with VExpansionPanel():
                VExpansionPanelTitle("Add a site from corrected cases")
                with VExpansionPanelText():
                    build_addsite_panel(actions.save_case, actions.add_site)
            with VExpansionPanel():
                VExpansionPanelTitle("Export")
                with VExpansionPanelText():
                    self._export_section(actions)
            with VExpansionPanel():
                VExpansionPanelTitle("Engine log")
                with VExpansionPanelText():
                    html.Pre(
                        "{{ uh_log.join('\\n') }}",
                        id="log",
                        style="font-size: 11px; max-height: 240px; overflow: auto; white-space: pre-wrap;",
                    )

    def _case_section(self, actions: Actions) -> None:
        VBtn(
            "Open the sample case",
            id="load-sample",
            click=actions.load_sample,
            block=True,
            variant="tonal",
            prepend_icon="mdi-flask-outline",
            classes="mb-2",
        )
        with html.Div(classes="d-flex align-center mb-1"):
            VTextField(
                v_model=("uh_folder", ""),
                id="server-folder",
                label="Folder on the server",
                density="compact",
                hide_details=True,
            )
            VBtn("Open", id="open-folder", click=actions.open_folder, variant="tonal", classes="ml-1")
        html.Div("Or send files from this computer with the upload buttons at the top.", classes="text-caption mb-1")
        html.Div("{{ uh_case_text }}", id="case-name", classes="text-body-2")

    def _segment_section(self, actions: Actions) -> None:
        VSelect(
            id="model-select",
            v_model=("uh_model", ""),
            items=("uh_models", []),
            item_title="title",
            item_value="value",
            label="Model",
            density="compact",
            hide_details=True,
        )
        html.Pre(
            "{{ uh_model_summary }}",
            id="model-summary",
            classes="text-caption my-1",
            style="white-space: pre-wrap; font-family: inherit; max-height: 6.5em; overflow-y: auto;",
        )
        VCheckbox(
            id="mirror",
            v_model=("uh_mirror", False),
            label="Test-time mirroring (4 passes: 4 times slower, about half a Dice point)",
            density="compact",
            hide_details=True,
        )
        VBtn(
            "{{ uh_segment_text }}",
            id="segment",
            click=actions.segment,
            disabled=("!uh_segment_enabled",),
            block=True,
            color="primary",
        )
        VProgressLinear(
            id="segment-progress",
            model_value=("uh_segment_total ? 100 * uh_segment_done / uh_segment_total : 0",),
            height=14,
            classes="my-1",
            raw_attrs=[':data-done="uh_segment_done"', ':data-total="uh_segment_total"'],
        )
        html.Div("{{ uh_status }}", id="status", classes="text-body-2", raw_attrs=[':data-run="uh_run_folder"'])
        with (
            html.Div(id="segments", v_if=("uh_volumes.length",), classes="mt-1"),
            html.Div(
                v_for="row in uh_volumes",
                key="row.name",
                classes="segment-row text-body-2 d-flex align-center",
                raw_attrs=[':data-segment="row.name"', ':data-ml="row.ml"'],
            ),
        ):
            html.Span(
                style=("{ background: row.color, width: '12px', height: '12px', display: 'inline-block' }",),
                classes="mr-2",
            )
            html.Span("{{ row.name }}: {{ row.ml.toFixed(2) }} ml")
        VDivider(classes="my-2")

    def _export_section(self, actions: Actions) -> None:
        download = (
            "utils.download(uh_export_name, "
            f"trigger('{self.server.controller.trigger_name(actions.export_seg)}'), 'application/octet-stream')"
        )
        VBtn(
            "Download .seg.nrrd",
            id="export-seg",
            click=download,
            disabled=("!uh_has_segmentation",),
            block=True,
            variant="tonal",
            classes="mb-1",
        )
        dicom = (  # nothing to save when the export was refused (its reason shows as the panel's error)
            f"trigger('{self.server.controller.trigger_name(actions.export_dicom)}')"
            ".then(zip => zip && utils.download(uh_dicom_name, zip, 'application/zip'))"
        )
        VBtn(
            "Download DICOM SEG (.zip)",
            id="export-dicom",
            click=dicom,
            disabled=("!uh_has_segmentation || !!uh_dicom_reason",),
            block=True,
            variant="tonal",
            classes="mb-1",
        )
        html.Div("{{ uh_dicom_reason }}", id="dicom-reason", v_if=("uh_dicom_reason",), classes="text-caption mb-1")
        html.Div("{{ uh_export_status }}", id="export-status", classes="text-body-2")
