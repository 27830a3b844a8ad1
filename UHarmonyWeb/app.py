"""The browser edition's logic: open a case, segment it, show the gate, correct, add a site, export.

One trame-slicer `SlicerApp` holds the scene, views and Segment Editor; every UHarmony step is the
desktop module's logic (UHarmonySlicerLib) on that scene, and every model run is an engine process
(`uharmony segment`, `uharmony add-site`) polled on the server's loop (UHarmonyWeb.runner).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import slicer
from trame.app import TrameApp, get_server
from trame.app.file_upload import ClientFile
from trame_server import Server
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic, SegmentEditorLogic
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories
from UHarmonySlicerLib.addsite import AddSiteResult, Pair, TrainingCurve
from UHarmonySlicerLib.errors import EngineError, InputRefused
from UHarmonySlicerLib.gate_display import show_gate_map
from UHarmonySlicerLib.models import ModelInfo, default_folders, discover, read_model, user_models_dir
from UHarmonySlicerLib.segment import SegmentResult, segment_job

from UHarmonyWeb import addsite_set
from UHarmonyWeb.addsite_panel import loss_points, plot_xy
from UHarmonyWeb.cases import Case, channel_volumes, folder_files, load_files, load_sample
from UHarmonyWeb.export import dicom_seg_unavailable, export_dicom_seg, export_seg_nrrd, mark_engine_output
from UHarmonyWeb.gate_panel import gate_state
from UHarmonyWeb.page import Actions, Page
from UHarmonyWeb.probe import Probe
from UHarmonyWeb.runner import JobRunner
from UHarmonyWeb.workspace import Workspace, slug

SEGMENT, ADDSITE = "uh_segment", "uh_addsite"  # the two job buttons' state keys
F = TypeVar("F", bound=Callable[..., Any])


def reported(handler: F) -> F:
    """A page action whose refusals (bad input, engine failure) show as the panel's one-line error."""

    @wraps(handler)
    def run(self: UHarmonyWebApp, *args: Any, **kwargs: Any) -> Any:
        try:
            return handler(self, *args, **kwargs)
        except (InputRefused, EngineError) as e:
            self.show_error(str(e))
            return None

    return run  # type: ignore[return-value]


class UHarmonyWebApp(TrameApp):
    """One server's app: a scene, its views and editor, the open case and its latest segmentation."""

    def __init__(
        self,
        server: Server | str | None = None,
        model_folders: Sequence[Path] = (),
        work: Path = Path("uharmony-web"),
        device: str = "auto",
    ) -> None:
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layouts = LayoutButtonLogic(self.server, self.slicer)
        self.editor = SegmentEditorLogic(self.server, self.slicer)
        self.workspace = Workspace(Path(work))
        self.user_folder = user_models_dir()
        self.folders = [*default_folders(self.user_folder), *model_folders]
        self.device = device
        self.case: Case | None = None
        self.result: SegmentResult | None = None
        self.models: list[ModelInfo] = []
        self.curve: TrainingCurve | None = None
        self._curve_steps = 0
        self.runner = JobRunner(self.state, [(SEGMENT, "Segment"), (ADDSITE, "Add the site")], self.show_error)
        self._initial_state()
        actions = Actions(
            load_sample=self.load_sample,
            open_folder=self.open_folder,
            segment=self.segment,
            save_case=self.save_case,
            add_site=self.add_site,
            export_seg=self.export_seg,
            export_dicom=self.export_dicom,
        )
        self.page = Page(self.server, self.layouts.layout_manager, actions)
        self.editor.set_ui(self.page.editor)
        self.page.upload.on_load_volume.connect(self.on_upload)
        self.probe = Probe(self.slicer, self.state, self.segmentation)
        self.state.change("uh_model")(self.on_model_changed)
        self.state.change("uh_site_name")(self.on_site_changed)
        self.state.change("uh_gate_map")(self.on_gate_map_changed)
        self.refresh_models()

    def _initial_state(self) -> None:
        self.state.update(
            {
                "trame__title": "UHarmony",
                "uh_error": "",
                "uh_status": "Open a case to begin.",
                "uh_run_folder": "",
                "uh_case_text": "No case open.",
                "uh_model_summary": "",
                "uh_volumes": [],
                "uh_has_segmentation": False,
                "uh_gate_map": False,
                "uh_can_save": False,
                "uh_set_text": "",
                "uh_set_cases": 0,
                "uh_loss": [],
                "uh_loss_xy": [],
                "uh_addsite_status": "",
                "uh_export_name": "segmentation.seg.nrrd",
                "uh_dicom_name": "segmentation.dicom-seg.zip",
                "uh_dicom_reason": "",
                "uh_export_status": "",
                **gate_state(None, False),
            }
        )

    # ------------------------------------------------------------ messages and readiness

    def show_error(self, message: str) -> None:
        self.state.uh_error = message

    def segmentation(self) -> slicer.vtkMRMLSegmentationNode | None:
        """The open case's latest segmentation, as long as it is still in the scene."""
        node = self.result.segmentation if self.result is not None else None
        return node if node is not None and self.slicer.scene.IsNodePresent(node) else None

    def current_model(self) -> ModelInfo | None:
        return next((m for m in self.models if str(m.path) == self.state.uh_model), None)

    def segmentation_model(self) -> ModelInfo | None:
        """The model that made the open segmentation (its card codes the segments), else the selected one."""
        segmentation = self.segmentation()
        path = segmentation.GetAttribute("UHarmony.modelPath") if segmentation is not None else None
        if not path:
            return self.current_model()
        return next((m for m in self.models if str(m.path) == path), None) or read_model(Path(path))

    def _required_model(self) -> ModelInfo:
        model = self.current_model()
        if model is None:
            raise InputRefused("Choose a model first.")
        return model

    def _required_case(self) -> Case:
        if self.case is None:
            raise InputRefused("Open a case first.")
        return self.case

    def update_readiness(self) -> None:
        """Which buttons can act now; the running job's button stays the only one enabled (JobButtons)."""
        model = self.current_model()
        usable = model is not None and model.usable
        site = str(self.state.uh_site_name or "").strip()
        folder = addsite_set.set_folder(self.workspace.sets, site) if site else None
        count = addsite_set.case_count(folder) if folder else 0
        self.runner.update([usable and self.case is not None, usable and count > 0])
        has_segmentation = self.segmentation() is not None
        self.state.uh_has_segmentation = has_segmentation
        self.state.uh_dicom_reason = dicom_seg_unavailable(self.segmentation_model()) if has_segmentation else ""
        self.state.uh_can_save = has_segmentation and bool(site) and not self.runner.running
        self.state.uh_set_cases = count
        if not site:
            self.state.uh_set_text = "Name the site whose cases you correct; each saved case joins its set."
        else:
            self.state.uh_set_text = f"{count} case(s) of site {site} saved in {folder}."

    # ------------------------------------------------------------ models

    def refresh_models(self, select: Path | None = None) -> None:
        """List every bundle in the model folders; keep the selection, or select `select` (a new version)."""
        self.models = discover(self.folders)
        self.state.uh_models = [{"title": m.display_name, "value": str(m.path)} for m in self.models]
        wanted = str(select) if select is not None else self.state.uh_model
        usable = [str(m.path) for m in self.models if m.usable]
        self.state.uh_model = wanted if wanted in usable else (usable[0] if usable else "")
        self.on_model_changed()

    def on_model_changed(self, **_: Any) -> None:
        model = self.current_model()
        self.state.uh_model_summary = (
            model.summary() if model else "No model found in " + ", ".join(str(f) for f in self.folders)
        )
        self.update_readiness()

    # ------------------------------------------------------------ cases

    def _open(self, load: Callable[[], Case]) -> None:
        if self.runner.running:
            raise InputRefused("A job is running: wait for it or cancel it before opening another case.")
        self.slicer.scene.Clear()
        self.case, self.result, self.curve = None, None, None
        self.state.update(
            {"uh_volumes": [], "uh_gate_map": False, "uh_run_folder": "", "uh_case_text": "No case open."}
        )
        self.state.update(gate_state(None, False))
        self.runner.reset_progress(SEGMENT)
        self.update_readiness()
        self.case = load()
        display = self.slicer.display_manager
        display.show_volume_in_slice_background(self.case.reference)
        display.show_volume_in_slice_foreground(None)
        display.reset_views()
        names = ", ".join(v.GetName() for v in self.case.volumes)
        self.state.uh_case_text = f"{self.case.name}: {len(self.case.volumes)} image(s) ({names})"
        self.state.uh_status = "Case open: choose a model and segment."
        self.state.uh_error = ""
        self.update_readiness()

    @reported
    def load_sample(self) -> None:
        self._open(lambda: load_sample(self.slicer))

    @reported
    def open_folder(self) -> None:
        folder = Path(str(self.state.uh_folder or "").strip()).expanduser()
        self._open(lambda: load_files(self.slicer, folder_files(folder)))

    @reported
    def on_upload(self, files: list[dict[str, Any]]) -> None:
        """Files sent from the browser are kept under the work folder's uploads, then opened as one case.

        Only each file's own name is used (a name with folders in it cannot write outside the upload folder).
        """
        uploads = [ClientFile(f) for f in files]
        folder = self.workspace.new_folder(self.workspace.uploads, Path(uploads[0].name).name or "upload")
        paths: list[Path] = []
        for upload in uploads:
            path = folder / (Path(upload.name).name.lstrip(".") or f"file-{len(paths)}")
            path.write_bytes(upload.content)
            paths.append(path)
        with self.state:
            self._open(lambda: load_files(self.slicer, paths))

    # ------------------------------------------------------------ segmentation

    @reported
    def segment(self) -> None:
        def make_job() -> Any:
            model, case = self._required_model(), self._required_case()
            return segment_job(
                self.slicer.scene,
                model,
                channel_volumes(case, model.channel_names),
                device=self.device,
                name=f"{case.name} segmentation",
                on_event=self.runner.progress(SEGMENT),
                mirror=bool(self.state.uh_mirror),
                output=self.segmentation(),
            )

        if self.runner.press(SEGMENT, make_job, self.on_segmented, lambda: self._status("Cancelled.")):
            self.state.uh_error = ""
            self._status("Segmenting...")
        self.update_readiness()

    def _status(self, text: str) -> None:
        self.state.uh_status = text

    def on_segmented(self, result: SegmentResult) -> None:
        """Show the result: segments in the views and the editor, the gate, the volumes; keep the engine's record."""
        assert self.case is not None
        self.result = result
        model = self.segmentation_model()
        if model is not None:  # what the engine made, to tell an edited segmentation at export
            mark_engine_output(self.slicer.scene, result.segmentation, model)
        editor = self.slicer.segmentation_editor
        editor.set_active_segmentation(result.segmentation, self.case.reference)
        editor.set_surface_representation_enabled(True)  # every new result is shown in 3D too
        self.editor.data.segment_display.show_3d = True
        for view in self.slicer.view_manager.get_threed_views():
            view.reset_camera()
        run = self.workspace.new_folder(self.workspace.runs, f"{self.case.name} {result.payload.get('model', '')}")
        (run / "engine_result.json").write_text(json.dumps(result.payload, indent=2) + "\n", encoding="utf-8")
        segments = result.segmentation.GetSegmentation()
        colors = {
            segment.GetName(): "#" + "".join(f"{round(255 * c):02x}" for c in segment.GetColor())
            for segment in (segments.GetNthSegment(i) for i in range(segments.GetNumberOfSegments()))
        }
        self.state.update(
            {
                "uh_volumes": [
                    {"name": name, "ml": float(ml), "color": colors.get(name, "#888888")}
                    for name, ml in result.volumes_ml.items()
                ],
                "uh_run_folder": str(run),
                "uh_export_name": f"{slug(self.case.name)}.seg.nrrd",
                "uh_dicom_name": f"{slug(self.case.name)}.dicom-seg.zip",
                **gate_state(result.gate, result.gate_map is not None),
            }
        )
        show_gate_map(result.segmentation, bool(self.state.uh_gate_map))
        self._status(
            f"Done with {result.payload.get('model', 'the model')} in {result.payload.get('seconds', 0):.1f} s; "
            "correct it in the Segment Editor (brush button on the left)."
        )
        self.update_readiness()

    def on_gate_map_changed(self, uh_gate_map: bool, **_: Any) -> None:
        segmentation = self.segmentation()
        if segmentation is not None:
            show_gate_map(segmentation, bool(uh_gate_map))

    # ------------------------------------------------------------ add a site

    def on_site_changed(self, **_: Any) -> None:
        self.update_readiness()

    @reported
    def save_case(self) -> None:
        model, case = self._required_model(), self._required_case()
        segmentation = self.segmentation()
        if segmentation is None:
            raise InputRefused("Segment the case (and correct it) before saving it.")
        site = str(self.state.uh_site_name).strip()
        pair = Pair(channel_volumes(case, model.channel_names), segmentation)
        count = addsite_set.save_case(
            self.slicer.scene, addsite_set.set_folder(self.workspace.sets, site), pair, site, model
        )
        self.state.uh_addsite_status = f"Saved {case.name} as case {count} of site {site}."
        self.update_readiness()

    @reported
    def add_site(self) -> None:
        def make_job() -> Any:
            model = self._required_model()
            site = str(self.state.uh_site_name).strip()
            try:
                steps = int(self.state.uh_steps)
            except (TypeError, ValueError):
                raise InputRefused("Training steps must be a whole number.") from None
            job = addsite_set.add_site_set_job(
                model,
                addsite_set.set_folder(self.workspace.sets, site),
                site,
                self.user_folder,
                self.folders,
                steps=steps,
                device=self.device,
                on_event=self.on_addsite_event,
            )
            self.remove_curve()
            self.curve, self._curve_steps = TrainingCurve(self.slicer.scene), steps
            return job

        if self.runner.press(ADDSITE, make_job, self.on_site_added, self.on_addsite_cancelled):
            self.state.uh_error = ""
            self.state.uh_addsite_status = "Training..."
        self.update_readiness()

    def on_addsite_event(self, event: dict[str, Any]) -> None:
        self.runner.progress(ADDSITE)(event)
        if self.curve is not None:
            self.curve.on_event(event)
            points = loss_points(self.curve)
            if len(points) != len(self.state.uh_loss):
                self.state.uh_loss = points
                self.state.uh_loss_xy = plot_xy(points, self._curve_steps)

    def remove_curve(self) -> None:
        """Take the previous run's loss curve out of the scene and the page."""
        if self.curve is not None:
            self.curve.remove(self.slicer.scene)
            self.curve = None
        self.state.update({"uh_loss": [], "uh_loss_xy": []})

    def on_addsite_cancelled(self) -> None:
        """A cancelled run leaves nothing behind, its curve included."""
        self.remove_curve()
        self.state.uh_addsite_status = "Cancelled: no new version was written."

    def on_site_added(self, result: AddSiteResult) -> None:
        if self.curve is not None:
            self.curve.add_result(result.payload)
        self.refresh_models(select=result.model.path)
        self.state.uh_addsite_status = (
            f"New version {result.model.name} v{result.model.version} (sites: {', '.join(result.model.site_names)}) "
            f"saved in {result.model.path.parent} and selected; the previous version is still in the model list."
        )

    # ------------------------------------------------------------ export

    def export_seg(self) -> Any:
        """Write the segmentation as edited into the work folder's exports and send it to the browser."""
        segmentation, case = self.segmentation(), self.case
        if segmentation is None or case is None:
            self.show_error("Segment a case before exporting it.")
            return None
        folder = self.workspace.new_folder(self.workspace.exports, case.name)
        try:
            path = export_seg_nrrd(segmentation, folder / str(self.state.uh_export_name))
        except EngineError as e:
            self.show_error(str(e))
            return None
        self.state.uh_export_status = f"Saved {path} on the server and sent it to this browser."
        self.state.flush()
        return self.server.protocol.addAttachment(path.read_bytes())

    @reported
    def export_dicom(self) -> Any:
        """Write the DICOM SEG (and the derived series a NIfTI/NRRD case needs) as a zip and send it to the browser."""
        segmentation, case, model = self.segmentation(), self.case, self.segmentation_model()
        if segmentation is None or case is None:
            raise InputRefused("Segment a case before exporting it.")
        if model is None or dicom_seg_unavailable(model):
            raise InputRefused(dicom_seg_unavailable(model))
        folder = self.workspace.new_folder(self.workspace.exports, case.name)
        name = folder / str(self.state.uh_dicom_name)
        path = export_dicom_seg(self.slicer.scene, segmentation, model, name, case.name, case.files)
        what = "DICOM SEG" if case.files else "DICOM SEG with the derived MR series it references"
        self.state.uh_export_status = f"Saved {path} ({what}) on the server and sent it to this browser."
        self.state.flush()
        return self.server.protocol.addAttachment(path.read_bytes())


def serve(host: str, port: int, model_folders: Sequence[Path], work: Path, device: str = "auto") -> None:
    """Build the app and serve it until interrupted; a running engine job is stopped on the way out."""
    os.environ.setdefault("TRAME_ARGS", "")  # `uharmony web`'s options are not trame's: keep it off sys.argv
    app = UHarmonyWebApp(get_server("uharmony-web"), model_folders, work, device)
    print(f"UHarmony browser edition: work folder {work}; models from {', '.join(map(str, app.folders))}", flush=True)
    try:
        app.server.start(host=host, port=port, open_browser=False, timeout=0)
    finally:
        app.runner.cancel()
