"""UHarmony: brain-lesion segmentation with a model trained on many hospitals, in 3D Slicer.

The widget only binds the panel to the parameter node and calls UHarmonySlicerLib,
which does the MRML work and runs the engine (UHarmonyLib) in a separate PythonSlicer
process, so the GUI never freezes and a crash of the engine cannot take the scene.
"""

import importlib.util
import logging
import pathlib
import sys
import tempfile
from typing import Annotated, ClassVar, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from UHarmonySlicerLib import dependencies, install
from UHarmonySlicerLib.addsite import Pair, TrainingCurve, add_site_job, export_dataset
from UHarmonySlicerLib.choice_texts import show_choice_texts
from UHarmonySlicerLib.cohort import cases_from_folder, cases_from_volumes, cohort_job, export_csv, scene_volumes
from UHarmonySlicerLib.engine import DEVICES
from UHarmonySlicerLib.errors import InputRefused
from UHarmonySlicerLib.gate_display import (
    CHART_ROLE,
    MAP_ROLE,
    TABLE_ROLE,
    read_gate,
    show_gate_map,
    unfamiliar_message,
)
from UHarmonySlicerLib.job_buttons import JobButtons
from UHarmonySlicerLib.models import ModelInfo, default_folders, discover, read_model, user_models_dir
from UHarmonySlicerLib.sample_data import bundled_sample
from UHarmonySlicerLib.scene import show_in_3d, source_volume
from UHarmonySlicerLib.segment import segment_job

COHORT_SOURCES = ["folder", "scene volumes"]


#
# Module
#


class UHarmonySlicer(ScriptedLoadableModule):
    """What Slicer lists about the module: title, category, help, acknowledgement."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("UHarmony")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["UHarmony team"]
        self.parent.helpText = _(
            "Segments brain lesions with one model trained jointly on many hospitals (sites). "
            "The model recognizes which site a case resembles (its gate), shows how sure it is, "
            "warns when a case looks unlike every site it knows, and can learn a new site from a "
            "few cases annotated here. Runs in a separate process; Apply turns into Cancel."
        )
        self.parent.acknowledgementText = _(
            "Based on U-Harmony (Ma et al., arXiv 2601.14605). Uses PyTorch, MONAI and SimpleITK. "
            "The bundled models were trained on synthetic images derived from the MNI ICBM152 2009a template, "
            "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
            "Institute, McGill University."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """The bundled sample case in the Sample Data module (category UHarmony), once Slicer has started."""
    import SampleData

    source = bundled_sample()
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=source.category,
        sampleName=source.name,
        uris=source.uris,
        fileNames=source.file_names,
        nodeNames=source.node_names,
        checksums=source.checksums,
        loadFileType=source.load_file_types,
    )


#
# Parameter node
#


@parameterNodeWrapper
class UHarmonySlicerParameterNode:
    """The panel's settings, saved with the scene. Fields bound in the .ui carry its SlicerParameterName."""

    modelPath: str
    userModelsFolder: pathlib.Path
    # typing.Optional, not `X | None`: the parameter node wrapper recognizes typing.Union only
    channelVolumes: list[Optional[vtkMRMLScalarVolumeNode]]  # noqa: UP045
    site: str = "auto"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    mirror: bool = False
    outputSegmentation: vtkMRMLSegmentationNode  # None: Apply adds a new one (then chooses it)
    show3D: bool = False
    gateSegmentation: vtkMRMLSegmentationNode
    showGateMap: bool = False
    newSiteName: str
    addSiteSteps: Annotated[int, WithinRange(1, 10000)] = 150
    cohortSource: Annotated[str, Choice(COHORT_SOURCES)] = "folder"
    # str, not pathlib.Path: an unset Path reads "." and shows as "." (the path fields are bound by hand below)
    cohortFolder: str = ""
    cohortOutputFolder: str = ""
    cohortTable: vtkMRMLTableNode


#
# Widget
#


class UHarmonySlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds widgets to the parameter node, starts jobs, shows their progress and results."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models: list[ModelInfo] = []
        self._channelCombos: list = []
        self.jobs = None
        self._curve = None
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/UHarmonySlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = UHarmonySlicerLogic()
        self.jobs = JobButtons(
            [
                (self.ui.applyButton, _("Apply")),
                (self.ui.addSiteButton, _("Train new site")),
                (self.ui.cohortRunButton, _("Segment all cases")),
            ],
            cancel_text=_("Cancel"),
            ensure_dependencies=self.logic.ensureDependencies,
            show_error=lambda message: slicer.util.errorDisplay(message, windowTitle=_("UHarmony")),
            log=self.log,
            cancelled_message=_("Cancelled; the scene was left as it was."),
        )

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.refreshModelsButton.clicked.connect(lambda: self.refreshModels())
        self.ui.userModelsPathLineEdit.currentPathChanged.connect(lambda _path: self.refreshModels())
        cohortFolder, cohortOutput = self.ui.cohortFolderPathLineEdit, self.ui.cohortOutputPathLineEdit
        cohortFolder.currentPathChanged.connect(lambda path: self.setCohortPath("cohortFolder", path))
        cohortOutput.currentPathChanged.connect(lambda path: self.setCohortPath("cohortOutputFolder", path))
        self.ui.siteComboBox.currentIndexChanged.connect(self.onSiteChanged)
        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.show3DCheckBox.toggled.connect(self.onShow3D)
        self.ui.editButton.clicked.connect(self.onEdit)
        self.ui.gateSegmentationSelector.currentNodeChanged.connect(self.updateGatePanel)
        self.ui.showGateChartButton.clicked.connect(self.onShowGateChart)
        self.ui.gateMapCheckBox.toggled.connect(self.onShowGateMap)
        self.ui.addPairButton.clicked.connect(self.addPairRow)
        self.ui.removePairButton.clicked.connect(self.onRemovePair)
        self.ui.addSiteButton.clicked.connect(self.onAddSite)
        self.ui.showTrainingChartButton.clicked.connect(self.onShowTrainingChart)
        self.ui.cohortRunButton.clicked.connect(self.onCohort)
        self.ui.exportCsvButton.clicked.connect(self.onExportCsv)

        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self.jobs is not None and self.jobs.running:
            self.cancelJob()
        self.removeObservers()

    def onReload(self) -> None:
        """Forget UHarmonySlicerLib as well, so that Reload picks up edits to it too."""
        for name in [m for m in sys.modules if m == "UHarmonySlicerLib" or m.startswith("UHarmonySlicerLib.")]:
            del sys.modules[name]
        super().onReload()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self.jobs.running:
            self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        if not str(parameterNode.userModelsFolder).strip(". "):
            parameterNode.userModelsFolder = user_models_dir()
        self.setParameterNode(parameterNode)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            show_choice_texts(self.ui.deviceComboBox, DEVICES, self.deviceTexts())
            self.ui.cohortFolderPathLineEdit.currentPath = self._parameterNode.cohortFolder
            self.ui.cohortOutputPathLineEdit.currentPath = self._parameterNode.cohortOutputFolder
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    @staticmethod
    def deviceTexts() -> dict[str, str]:
        """What the device box shows for each engine choice (connectGui fills it with the bare choices)."""
        return {
            "auto": _("Automatic: NVIDIA GPU (CUDA) if present, else CPU"),
            "cpu": _("CPU"),
            "cuda": _("NVIDIA GPU (CUDA)"),
            "mps": _("Apple GPU (MPS)"),
        }

    # ------------------------------------------------------------ models

    def currentModel(self):
        index = self.ui.modelComboBox.currentIndex
        return self._models[index] if 0 <= index < len(self._models) else None

    def refreshModels(self, select: str = "") -> None:
        """List the bundled models and the user's; keep the current choice (or select `select`)."""
        if self._parameterNode is None:
            return
        wanted = select or self._parameterNode.modelPath
        # the line edit, not the parameter node: this runs on its change signal, maybe before connectGui's
        self._models = discover(default_folders(pathlib.Path(self.ui.userModelsPathLineEdit.currentPath)))
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for info in self._models:
            combo.addItem(info.display_name, str(info.path))
        paths = [str(m.path) for m in self._models]
        combo.currentIndex = paths.index(wanted) if wanted in paths else (0 if paths else -1)
        combo.blockSignals(False)
        self.onModelChanged()

    def onModelChanged(self) -> None:
        """Show the card and rebuild what depends on the model: channel selectors, sites, add-site columns."""
        model = self.currentModel()
        self.ui.modelInfoLabel.text = model.summary() if model else _("No model bundle found.")
        if self._parameterNode is not None:
            self._parameterNode.modelPath = str(model.path) if model else ""
        self.buildChannelSelectors(model)
        self.ui.siteComboBox.blockSignals(True)
        self.ui.siteComboBox.clear()
        self.ui.siteComboBox.addItem(_("auto (recognized by the model)"), "auto")
        for site in model.site_names if model else []:
            self.ui.siteComboBox.addItem(site, site)
        wanted = self._parameterNode.site if self._parameterNode else "auto"
        index = self.ui.siteComboBox.findData(wanted)
        self.ui.siteComboBox.currentIndex = max(index, 0)
        self.ui.siteComboBox.blockSignals(False)
        self.onSiteChanged()
        self.buildPairColumns(model)
        self.updateButtons()

    def buildChannelSelectors(self, model) -> None:
        """One volume selector per model channel, labelled with the card's channel name and modality; empty = absent."""
        layout = self.ui.channelsWidget.layout()
        while layout.count():
            child = layout.takeAt(0).widget()
            if child is not None:
                child.deleteLater()
        self._channelCombos = []
        stored = list(self._parameterNode.channelVolumes) if self._parameterNode else []
        for index, channel in enumerate(model.channels if model else []):
            combo = self.volumeSelector(
                _(
                    "Input volume for the {name} channel; leave empty if the case lacks it (the model then sees zeros)."
                ).format(name=channel["name"])
            )
            if index < len(stored) and stored[index] is not None:
                combo.setCurrentNode(stored[index])
            combo.currentNodeChanged.connect(self.onChannelChanged)
            layout.addRow(f"{channel['name']} ({channel.get('modality', '?')}):", combo)
            self._channelCombos.append(combo)
        self.onChannelChanged()

    def volumeSelector(self, toolTip: str):
        combo = slicer.qMRMLNodeComboBox()
        combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        combo.showChildNodeTypes = False  # no label maps
        combo.noneEnabled = True
        combo.addEnabled = False
        combo.removeEnabled = False
        combo.toolTip = toolTip
        combo.setMRMLScene(slicer.mrmlScene)
        return combo

    def onChannelChanged(self, *_args) -> None:
        if self._parameterNode is not None:
            self._parameterNode.channelVolumes = [c.currentNode() for c in self._channelCombos]
        self.updateButtons()

    def onSiteChanged(self, *_args) -> None:
        if self._parameterNode is not None:
            self._parameterNode.site = self.ui.siteComboBox.currentData or "auto"

    def updateButtons(self, *_args) -> None:
        """Enable what can run now (JobButtons: the running job's button reads Cancel, the others wait)."""
        model = self.currentModel()
        usable = model is not None and model.usable
        self.jobs.update(
            [
                usable and any(c.currentNode() for c in self._channelCombos),
                usable and self.ui.pairsTableWidget.rowCount > 0,
                usable,
            ]
        )
        output = self._parameterNode.outputSegmentation if self._parameterNode else None
        self.ui.editButton.enabled = not self.jobs.running and output is not None

    # ------------------------------------------------------------ jobs

    def startJob(self, makeJob, button, onDone, onCancel=None) -> bool:
        """Start a job from `button` (rules in UHarmonySlicerLib.job_buttons) and poll it from a timer."""
        started = self.jobs.start(button, makeJob, onDone, onCancel)
        if started:
            self._timer.start()
        return started

    def onTimer(self) -> None:
        if self.jobs.poll():
            self._timer.stop()

    def cancelJob(self) -> None:
        self.jobs.cancel()
        self._timer.stop()

    def log(self, message: str) -> None:
        self.ui.logTextEdit.appendPlainText(message)
        logging.info(message)

    def showProgress(self, bar, event: dict) -> None:
        """Progress events carry real counts (windows, steps); logs go to the log panel."""
        if event["event"] == "progress":
            bar.setMaximum(max(int(event["total"]), 1))
            bar.setValue(int(event["done"]))
            bar.setFormat(f"{event['stage']}: %v / %m")
        elif event["event"] in ("log", "output"):
            self.log(str(event.get("message", "")))

    # ------------------------------------------------------------ segment

    def onApply(self) -> None:
        if self.jobs.running:
            self.cancelJob()
            return
        p = self._parameterNode

        def makeJob():
            volumes = [c.currentNode() for c in self._channelCombos]
            return segment_job(slicer.mrmlScene, self.currentModel(), volumes, site=p.site, device=p.device,
                               mirror=p.mirror, on_event=self.onSegmentEvent,
                               output=p.outputSegmentation)  # fmt: skip

        if self.startJob(makeJob, self.ui.applyButton, self.onSegmentDone):
            self.ui.statusLabel.text = _("Running...")

    def onSegmentEvent(self, event: dict) -> None:
        self.showProgress(self.ui.progressBar, event)

    def onSegmentDone(self, result) -> None:
        gate = result.gate
        chosen = gate["chosen"] if not gate.get("site_given") else _("{site} (given)").format(site=gate["chosen"])
        volumes = ", ".join(f"{name} {ml:.2f} ml" for name, ml in result.volumes_ml.items())
        self.ui.statusLabel.text = _("Done: site {site}; {volumes}.").format(site=chosen, volumes=volumes)
        self._parameterNode.outputSegmentation = result.segmentation  # the next Apply updates it
        self._parameterNode.gateSegmentation = result.segmentation  # the gate panel follows
        if self._parameterNode.show3D:
            show_in_3d(result.segmentation, True)
        if result.warning:
            slicer.util.warningDisplay(result.warning, windowTitle=_("UHarmony: unfamiliar case"))

    def onShow3D(self, visible: bool) -> None:
        output = self._parameterNode.outputSegmentation if self._parameterNode else None
        if output is not None:
            show_in_3d(output, visible)

    def onEdit(self) -> None:
        """The output in the Segment Editor, its source volume the input it was made from."""
        output = self._parameterNode.outputSegmentation
        if output is None:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(output)
        volume = source_volume(output)
        if volume is not None:
            editor.setSourceVolumeNode(volume)

    # ------------------------------------------------------------ gate

    def updateGatePanel(self, *_args) -> None:
        """Show the gate table and the plain-words verdict of the chosen segmentation."""
        segmentation = self.ui.gateSegmentationSelector.currentNode()
        table = segmentation.GetNodeReference(TABLE_ROLE) if segmentation else None
        self.ui.gateTableView.setMRMLTableNode(table)
        self.ui.showGateChartButton.enabled = bool(segmentation and segmentation.GetNodeReference(CHART_ROLE))
        self.ui.gateMapCheckBox.enabled = bool(segmentation and segmentation.GetNodeReference(MAP_ROLE))
        if table is None:
            self.ui.gateWarningLabel.text = _("No site probabilities: pick a segmentation made by this module.")
            return
        gate = read_gate(table)
        warning = unfamiliar_message(gate)
        self.ui.gateWarningLabel.styleSheet = "color: #b00000; font-weight: bold;" if warning else ""
        self.ui.gateWarningLabel.text = warning or _(
            "The case looks like site {site} ({p:.0%}); the model knows this kind of image."
        ).format(site=gate["chosen"], p=gate["sites"].get(gate["chosen"], 0.0))

    def onShowGateChart(self) -> None:
        segmentation = self.ui.gateSegmentationSelector.currentNode()
        chart = segmentation.GetNodeReference(CHART_ROLE) if segmentation else None
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onShowGateMap(self, visible: bool) -> None:
        segmentation = self.ui.gateSegmentationSelector.currentNode()
        if segmentation is not None:
            show_gate_map(segmentation, visible)

    # ------------------------------------------------------------ add a site

    def buildPairColumns(self, model) -> None:
        """Columns of the case table: one volume per model channel, then the segmentation.

        The cases already entered stay when the channels stay (a refreshed model list, another
        version of the same model); only a model with other channels starts an empty table.
        """
        table = self.ui.pairsTableWidget
        names = model.channel_names if model else []
        headers = [*names, _("Segmentation")]
        shown = [
            table.horizontalHeaderItem(c).text() if table.horizontalHeaderItem(c) else ""
            for c in range(table.columnCount)
        ]
        if shown == headers:
            return
        table.setRowCount(0)
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)

    def addPairRow(self) -> None:
        table = self.ui.pairsTableWidget
        row = table.rowCount
        table.insertRow(row)
        for column in range(table.columnCount - 1):
            table.setCellWidget(row, column, self.volumeSelector(_("Image volume of this case")))
        segmentation = slicer.qMRMLNodeComboBox()
        segmentation.nodeTypes = ["vtkMRMLSegmentationNode"]
        segmentation.noneEnabled = True
        segmentation.addEnabled = False
        segmentation.toolTip = _("Its segments must be named like the model's labels.")
        segmentation.setMRMLScene(slicer.mrmlScene)
        table.setCellWidget(row, table.columnCount - 1, segmentation)
        self.updateButtons()

    def onRemovePair(self) -> None:
        table = self.ui.pairsTableWidget
        table.removeRow(table.currentRow() if table.currentRow() >= 0 else table.rowCount - 1)
        self.updateButtons()

    def pairs(self) -> list:
        table = self.ui.pairsTableWidget
        last = table.columnCount - 1
        return [
            Pair([table.cellWidget(r, c).currentNode() for c in range(last)], table.cellWidget(r, last).currentNode())
            for r in range(table.rowCount)
        ]

    def onAddSite(self) -> None:
        if self.jobs.running:
            self.cancelJob()
            return
        p = self._parameterNode

        def makeJob():
            job = add_site_job(slicer.mrmlScene, self.currentModel(), self.pairs(), p.newSiteName.strip(),
                               p.userModelsFolder, default_folders(p.userModelsFolder), steps=p.addSiteSteps,
                               device=p.device, on_event=self.onAddSiteEvent)  # fmt: skip
            self.removeCurve()
            self._curve = TrainingCurve(slicer.mrmlScene)
            slicer.modules.plots.logic().ShowChartInLayout(self._curve.chart)
            return job

        if self.startJob(makeJob, self.ui.addSiteButton, self.onAddSiteDone, onCancel=self.removeCurve):
            self.ui.addSiteStatusLabel.text = _("Training...")

    def removeCurve(self) -> None:
        """A cancelled run leaves nothing in the scene, its curve included."""
        if self._curve is not None:
            self._curve.remove(slicer.mrmlScene)
            self._curve = None

    def onAddSiteEvent(self, event: dict) -> None:
        self.showProgress(self.ui.addSiteProgressBar, event)
        self._curve.on_event(event)

    def onAddSiteDone(self, result) -> None:
        self._curve.add_result(result.payload)
        self.refreshModels(select=str(result.model.path))
        self.ui.addSiteStatusLabel.text = _(
            "New version {name} v{version} (sites: {sites}) saved in {folder} and selected; "
            "the previous version is still in the model list."
        ).format(
            name=result.model.name,
            version=result.model.version,
            sites=", ".join(result.model.site_names),
            folder=result.model.path.parent,
        )

    def onShowTrainingChart(self) -> None:
        if self._curve is not None:
            slicer.modules.plots.logic().ShowChartInLayout(self._curve.chart)

    # ------------------------------------------------------------ cohort

    def setCohortPath(self, field: str, path: str) -> None:
        if self._parameterNode is not None:
            setattr(self._parameterNode, field, path.strip())

    def onCohort(self) -> None:
        if self.jobs.running:
            self.cancelJob()
            return
        p = self._parameterNode

        def makeJob():
            model = self.currentModel()
            if p.cohortSource == "folder":
                if not p.cohortFolder:
                    raise InputRefused(_("Choose the folder of the cases."))
                cases = cases_from_folder(pathlib.Path(p.cohortFolder), model.channel_names)
            else:
                cases = cases_from_volumes(scene_volumes(slicer.mrmlScene), model.channel_names)
            output = pathlib.Path(p.cohortOutputFolder) if p.cohortOutputFolder else None
            return cohort_job(slicer.mrmlScene, model, cases, site=p.site, device=p.device, output_folder=output,
                              mirror=p.mirror, on_event=self.onCohortEvent)  # fmt: skip

        self.startJob(makeJob, self.ui.cohortRunButton, self.onCohortDone)

    def onCohortEvent(self, event: dict) -> None:
        if event["event"] == "case":
            self.ui.cohortStatusLabel.text = _("Case {i} of {n}: {name}").format(
                i=event["index"] + 1, n=event["total"], name=event["name"]
            )
        self.showProgress(self.ui.cohortProgressBar, event)

    def onCohortDone(self, result) -> None:
        self._parameterNode.cohortTable = result.table
        self.ui.cohortTableView.setMRMLTableNode(result.table)
        failed = [r["case"] for r in result.rows if r["status"] != "ok"]
        self.ui.cohortStatusLabel.text = _("{n} case(s) segmented").format(n=len(result.rows) - len(failed)) + (
            _("; not segmented: {cases} (reason in the table)").format(cases=", ".join(failed)) if failed else ""
        )

    def onExportCsv(self) -> None:
        table = self._parameterNode.cohortTable
        if table is None:
            return
        path = qt.QFileDialog.getSaveFileName(self.parent, _("Export cohort table"), "cohort.csv", "CSV (*.csv)")
        if path:
            export_csv(table, pathlib.Path(path))
            self.log(_("Wrote {path}").format(path=path))


#
# Logic
#


class UHarmonySlicerLogic(ScriptedLoadableModuleLogic):
    """What needs the Slicer application: the parameter node and installing the engine's dependencies.

    Everything else (scene nodes, engine runs) lives in UHarmonySlicerLib, which runs without Slicer.
    """

    def getParameterNode(self):
        return UHarmonySlicerParameterNode(super().getParameterNode())

    @staticmethod
    def requirementsPath() -> pathlib.Path:
        return pathlib.Path(__file__).resolve().parent / "Resources" / "requirements.txt"

    def ensureDependencies(self) -> bool:
        """Install PyTorch (through the PyTorch extension) and the rest on first use; False if not available.

        The conversation's rules live in UHarmonySlicerLib.install (tested without Slicer);
        this only hands it Slicer's calls. Slicer's own numpy, SimpleITK and vtk (and the
        installed torch) are pinned with a constraints file, so pip can add packages but
        never replace them.
        """
        requirements = dependencies.read_requirements(self.requirementsPath())
        host = install.Host(
            missing=lambda: [r.text for r in dependencies.missing(requirements)],
            torch_missing=dependencies.torch_missing,
            has_pytorch_extension=lambda: importlib.util.find_spec("PyTorchUtils") is not None,
            confirm=lambda question: slicer.util.confirmOkCancelDisplay(question, windowTitle=_("UHarmony")),
            install_pytorch_extension=self.installPyTorchExtension,
            install_torch=self.installTorch,
            pip_install=self.pipInstall,
            offer_restart=self.offerRestart,
            log=logging.info,
            testing=slicer.app.testingEnabled(),
            ask_packages=lambda names: _(
                "UHarmony needs these Python packages, which will now be downloaded and installed into Slicer "
                "(this can take several minutes):\n\n{names}\n\nInstall them?"
            ).format(names="\n".join(names)),
            extension_question=_(
                "UHarmony needs the PyTorch extension, which installs PyTorch for this computer's GPU or CPU. "
                "Install it from the Extensions Manager now? Slicer must restart afterwards."
            ),
        )
        return install.ensure(host)

    @staticmethod
    def installPyTorchExtension() -> bool:
        manager = slicer.app.extensionsManagerModel()
        with slicer.util.WaitCursor():
            manager.updateExtensionsMetadataFromServer(True, True)
            return bool(manager.downloadAndInstallExtensionByName("PyTorch", True, True))

    @staticmethod
    def installTorch() -> bool:
        import PyTorchUtils

        with slicer.util.WaitCursor():  # the user was asked once already: PyTorchUtils must not ask again
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=dependencies.TORCH_REQUIREMENT
            )
        return torch is not None

    @staticmethod
    def pipInstall(lines: list[str]) -> None:
        constraints = pathlib.Path(tempfile.mkdtemp(prefix="uharmony-")) / "constraints.txt"
        constraints.write_text("\n".join(dependencies.protected_constraints()) + "\n", encoding="utf-8")
        with slicer.util.WaitCursor():
            slicer.util.pip_install(dependencies.pip_arguments(lines, constraints))

    @staticmethod
    def offerRestart(message: str) -> None:
        if slicer.util.confirmYesNoDisplay(
            message + "\n\n" + _("Restart Slicer now? (Save your scene first if it has unsaved changes.)"),
            windowTitle=_("UHarmony"),
        ):
            slicer.util.restart()


#
# Test
#


class UHarmonySlicerTest(ScriptedLoadableModuleTest):
    """The flows of Testing/test_slicer_logic.py, inside Slicer, with a tiny model made on the spot."""

    def setUp(self) -> None:
        """Before every test: CTest's slicer_add_python_unittest runs each test_* alone after setUp."""
        slicer.mrmlScene.Clear()
        self.assertTrue(UHarmonySlicerLogic().ensureDependencies(), "the engine's Python packages are not installed")
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix="uharmony-test-"))

    def runTest(self) -> None:
        """Reload and Test: every test, each after its own setUp, as CTest runs them."""
        for test in (
            self.test_panel_lists_the_bundled_models,
            self.test_segment_then_gate,
            self.test_refusal_adds_nothing,
            self.test_cancel_leaves_the_scene_unchanged,
            self.test_cohort_table_and_csv,
            self.test_add_site_writes_a_new_version,
        ):
            self.setUp()
            test()

    # helpers: a tiny random model and brain-like volumes, nothing downloaded

    LABELS: ClassVar[list[dict]] = [
        {"value": 1, "name": "lesion core", "color": "#ff0000"},
        {"value": 2, "name": "perilesional edema", "color": "#00c0ff"},
    ]
    CHANNELS: ClassVar[list[dict]] = [{"name": "FLAIR", "modality": "MR"}]

    def tinyModel(self):
        import torch

        from UHarmonyLib.model.weights import make_card, save_bundle
        from UHarmonyLib.nn.config import NetworkConfig
        from UHarmonyLib.nn.network import UHarmonyNet

        torch.manual_seed(0)
        config = NetworkConfig(in_channels=1, out_channels=3, num_sites=3, filters=(4, 8, 16), gate_hidden=8)
        net = UHarmonyNet(config).eval()
        sites = [{"name": "alpha"}, {"name": "beta"}, {"name": "gamma"}]
        card = make_card(net, name="tiny", version=1, channels=self.CHANNELS, labels=self.LABELS, sites=sites,
                         preprocessing={"spacing": [1.5] * 3}, inference={"patch_size": [16] * 3})  # fmt: skip
        path = self.folder / "tiny-v1"
        if not path.exists():
            save_bundle(net, card, path)
        return read_model(path)

    def blob(self, shape=(16, 20, 24), seed=0):
        rng = np.random.default_rng(seed)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        head = (x / 0.85) ** 2 + (y / 0.8) ** 2 + (z / 0.9) ** 2 <= 1.0
        image = head * (100.0 + rng.normal(0, 8, shape))
        cx, cy, cz = rng.uniform(-0.4, 0.4, 3)
        image += head * 120.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 0.05)
        return image.astype("float32")

    def volume(self, name, array):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, array)
        node.SetSpacing(1.5, 1.5, 1.5)
        node.CreateDefaultDisplayNodes()
        return node

    # tests

    def test_panel_lists_the_bundled_models(self) -> None:
        widget = slicer.modules.uharmonyslicer.widgetRepresentation().self()
        self.assertGreaterEqual(widget.ui.modelComboBox.count, 1)
        self.assertTrue(widget.ui.modelInfoLabel.text)

    def test_segment_then_gate(self) -> None:
        model = self.tinyModel()
        case = self.volume("case", self.blob())
        events = []
        result = segment_job(slicer.mrmlScene, model, [case], device="cpu", on_event=events.append).run(timeout=600)
        segments = result.segmentation.GetSegmentation()
        self.assertEqual([segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())],
                         [lab["name"] for lab in self.LABELS])  # fmt: skip
        probabilities = read_gate(result.gate_table)["sites"].values()
        self.assertAlmostEqual(sum(probabilities), 1.0, places=4)
        self.assertIs(result.segmentation.GetNodeReference(TABLE_ROLE), result.gate_table)
        windows = [e for e in events if e["event"] == "progress" and e["stage"] == "segment"]
        self.assertEqual(windows[-1]["total"], result.payload["windows"] * result.payload["passes"])

    def test_refusal_adds_nothing(self) -> None:
        model = self.tinyModel()
        case = self.volume("refused", self.blob())
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputRefused):
            segment_job(slicer.mrmlScene, model, [case, case])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)

    def test_cancel_leaves_the_scene_unchanged(self) -> None:
        model = self.tinyModel()
        big = self.volume("big", self.blob((96, 128, 128), seed=2))
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        job = None

        def onEvent(event):
            if event["event"] == "progress":
                job.cancel()

        job = segment_job(slicer.mrmlScene, model, [big], device="cpu", on_event=onEvent)
        self.assertIsNone(job.run(timeout=600))
        self.assertTrue(job.cancelled)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)

    def test_cohort_table_and_csv(self) -> None:
        model = self.tinyModel()
        volumes = [self.volume(f"cohort {i}", self.blob(seed=i)) for i in range(2)]
        cases = cases_from_volumes(volumes, model.channel_names)
        result = cohort_job(slicer.mrmlScene, model, cases, device="cpu").run(timeout=600)
        self.assertEqual(result.table.GetNumberOfRows(), 2)
        csv = export_csv(result.table, self.folder / "cohort.csv")
        self.assertEqual(len(csv.read_text().splitlines()), 3)

    def test_add_site_writes_a_new_version(self) -> None:
        from UHarmonyLib.training import TrainConfig, train  # imports torch: only once it is installed

        def pair(site, seed, scale):
            raw = self.blob(seed=seed)
            volume = self.volume(f"{site} {seed}", raw * scale)
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            labels = np.where(raw > 170, 1, np.where(raw > 125, 2, 0)).astype("uint8")
            slicer.util.updateVolumeFromArray(labelmap, labels)
            labelmap.SetSpacing(1.5, 1.5, 1.5)
            segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{site} {seed} labels")
            slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
            slicer.mrmlScene.RemoveNode(labelmap)
            for i, label in enumerate(self.LABELS):
                segmentation.GetSegmentation().GetNthSegment(i).SetName(label["name"])
            return Pair([volume], segmentation)

        pairs = {site: [pair(site, 10 * k + i, scale) for i in range(2)]
                 for k, (site, scale) in enumerate((("alpha", 1.0), ("beta", 25.0), ("gamma", 0.3)))}  # fmt: skip
        data = [export_dataset(slicer.mrmlScene, self.folder / s, pairs[s], s, self.CHANNELS, self.LABELS)
                for s in ("alpha", "beta")]  # fmt: skip
        bundled = self.folder / "bundled"
        bundled.mkdir()
        train(TrainConfig(data=data, out=bundled / "blobs-v1", steps=3, patch=(16,), filters=(4, 8, 16),
                          val_fraction=0.0))  # fmt: skip
        parent = read_model(bundled / "blobs-v1")
        user = self.folder / "user"
        job = add_site_job(slicer.mrmlScene, parent, pairs["gamma"], "gamma", user, [bundled], steps=3, device="cpu")
        result = job.run(timeout=600)
        self.assertEqual(result.model.site_names, ["alpha", "beta", "gamma"])
        self.assertEqual(result.model.path, user / "blobs-v2")
        self.assertTrue((bundled / "blobs-v1").is_dir())
