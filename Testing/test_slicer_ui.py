"""The module's .ui file, loaded by Qt's own loader (PySide6, offscreen), against what UHarmonySlicer.py expects.

Slicer loads the same file with the same Qt loader; custom classes (ctk, qMRML) fall
back to their declared base here, and unknown properties (SlicerParameterName)
survive as dynamic properties, as in Slicer.
"""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET

import pytest
from slicer_helpers import MODULE_DIR

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported: no display here

from PySide6 import QtWidgets
from PySide6.QtCore import QFile
from PySide6.QtUiTools import QUiLoader

UI_FILE = MODULE_DIR / "Resources" / "UI" / "UHarmonySlicer.ui"
SOURCE = MODULE_DIR / "UHarmonySlicer.py"
# the naming convention of the module's widgets: suffix -> class (longest suffixes first)
CLASS_BY_SUFFIX = [
    ("CollapsibleButton", "ctkCollapsibleButton"),
    ("PathLineEdit", "ctkPathLineEdit"),
    ("LineEdit", "QLineEdit"),
    ("Selector", "qMRMLNodeComboBox"),
    ("TableView", "qMRMLTableView"),
    ("TableWidget", "QTableWidget"),
    ("ComboBox", "QComboBox"),
    ("CheckBox", "QCheckBox"),
    ("SpinBox", "QSpinBox"),
    ("ProgressBar", "QProgressBar"),
    ("Button", "QPushButton"),
    ("Label", "QLabel"),
    ("TextEdit", "QPlainTextEdit"),
    ("Widget", "QWidget"),
]
# what Slicer's connectGui accepts for each widget class (slicer/parameterNodeWrapper/guiConnectors.py)
ANNOTATION_BY_CLASS = {
    "QCheckBox": lambda a: a == "bool",
    "QSpinBox": lambda a: a == "int" or a.startswith("Annotated[int"),
    "QLineEdit": lambda a: a == "str",
    "QComboBox": lambda a: a.startswith("Annotated[str, Choice("),
    "ctkPathLineEdit": lambda a: a == "pathlib.Path",
    "qMRMLNodeComboBox": lambda a: a.startswith("vtkMRML"),
}


@pytest.fixture(scope="module")
def xml() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


@pytest.fixture(scope="module")
def loaded() -> QtWidgets.QWidget:
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    ui = QFile(str(UI_FILE))
    assert ui.open(QFile.ReadOnly)
    widget = QUiLoader().load(ui)
    ui.close()
    assert widget is not None, "QUiLoader could not load the .ui file"
    yield widget
    widget.deleteLater()
    app.processEvents()


def widget_classes(xml: ET.Element) -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in xml.iter("widget")}


def custom_bases(xml: ET.Element) -> dict[str, str | None]:
    return {c.findtext("class"): c.findtext("extends") for c in xml.iter("customwidget")}


def expected_class(name: str) -> str | None:
    return next((cls for suffix, cls in CLASS_BY_SUFFIX if name.lower().endswith(suffix.lower())), None)


def wrapper_fields() -> dict[str, str]:
    """Field -> annotation of the @parameterNodeWrapper class, read from the source (no Slicer here)."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    wrappers = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)
    ]
    assert len(wrappers) == 1
    return {
        stmt.target.id: ast.unparse(stmt.annotation)
        for stmt in wrappers[0].body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
    }


def test_the_top_widget_is_an_mrml_widget(xml: ET.Element, loaded: QtWidgets.QWidget) -> None:
    top = xml.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "UHarmonySlicer")
    assert loaded.objectName() == "UHarmonySlicer"


def test_every_widget_the_module_uses_exists_with_its_class(xml: ET.Element, loaded: QtWidgets.QWidget) -> None:
    used = sorted(set(re.findall(r"self\.ui\.(\w+)", SOURCE.read_text(encoding="utf-8"))))
    assert len(used) >= 25  # the regex found the widgets at all
    classes, bases = widget_classes(xml), custom_bases(xml)
    for name in used:
        assert name in classes, f"UHarmonySlicer.py uses self.ui.{name}, which the .ui lacks"
        assert classes[name] == expected_class(name), (name, classes[name])
        child = loaded.findChild(QtWidgets.QWidget, name)
        assert child is not None, f"Qt's loader did not create {name}"
        assert child.metaObject().className() == bases.get(classes[name], classes[name])


def test_parameter_names_match_wrapper_fields_and_connectors(xml: ET.Element, loaded: QtWidgets.QWidget) -> None:
    fields = wrapper_fields()
    bound = {}
    for widget in xml.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget.get("name")] = (widget.get("class"), prop.findtext("string"))
    assert len(bound) == 10
    for name, (cls, field) in bound.items():
        assert field in fields, f"{name}: SlicerParameterName {field!r} is no field of the parameter node"
        assert ANNOTATION_BY_CLASS[cls](fields[field]), f"connectGui cannot bind {cls} {name} to {fields[field]}"
        assert loaded.findChild(QtWidgets.QWidget, name).property("SlicerParameterName") == field
        if cls == "qMRMLNodeComboBox":
            node_types = [s.text for p in xml.iter("widget") if p.get("name") == name for s in p.iter("string")]
            assert fields[field] in node_types


def test_custom_widgets_are_declared_with_their_base(xml: ET.Element) -> None:
    bases = custom_bases(xml)
    assert all(bases.values()), f"custom widgets without <extends> are dropped by Qt's loader: {bases}"
    assert all(hasattr(QtWidgets, base) for base in bases.values())
    used = set(widget_classes(xml).values())
    assert {cls for cls in used if not hasattr(QtWidgets, cls)} == set(bases)


def test_optional_path_fields_are_not_bound_as_paths(xml: ET.Element) -> None:
    """An unset pathlib.Path reads "." and a ctkPathLineEdit bound to it shows "." (issue 19, item 7): the optional
    cohort folders are plain strings, empty when unset, and their path fields are bound by the widget's code."""
    fields = wrapper_fields()
    assert fields["cohortFolder"] == fields["cohortOutputFolder"] == "str"
    bound = {p.findtext("string") for p in xml.iter("property") if p.get("name") == "SlicerParameterName"}
    assert not {"cohortFolder", "cohortOutputFolder"} & bound
    source = SOURCE.read_text(encoding="utf-8")
    assert 'cohortFolder: str = ""' in source and 'cohortOutputFolder: str = ""' in source
    for edit in ("cohortFolderPathLineEdit", "cohortOutputPathLineEdit"):
        assert f"self.ui.{edit}" in source
