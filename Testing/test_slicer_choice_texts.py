"""The device box's translated words (UHarmonySlicerLib.choice_texts) on the real .ui's combo box.

The box is filled the way Slicer's parameter-node connector fills a `Choice` (cleared, one
item per `str(choice)`, the chosen index read back), then relabelled as the widget does after
every `connectGui`.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from typing import Any

import pytest
from slicer_helpers import MODULE_DIR

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported: no display here

from PySide6 import QtWidgets
from PySide6.QtCore import QFile
from PySide6.QtUiTools import QUiLoader
from UHarmonySlicerLib.choice_texts import show_choice_texts
from UHarmonySlicerLib.engine import DEVICES

UI_FILE = MODULE_DIR / "Resources" / "UI" / "UHarmonySlicer.ui"


def widget_device_texts() -> dict[str, str]:
    """The widget's deviceTexts() mapping, read from the module's source (it needs Slicer to run)."""
    tree = ast.parse((MODULE_DIR / "UHarmonySlicer.py").read_text(encoding="utf-8"))
    method = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "deviceTexts")
    returned = next(n.value for n in ast.walk(method) if isinstance(n, ast.Return))
    assert isinstance(returned, ast.Dict)
    texts = {}
    for key, value in zip(returned.keys, returned.values):
        assert isinstance(key, ast.Constant) and isinstance(value, ast.Call)  # _("...") for Slicer's translators
        assert isinstance(value.func, ast.Name) and value.func.id == "_" and isinstance(value.args[0], ast.Constant)
        texts[key.value] = value.args[0].value
    return texts


@pytest.fixture
def device_box() -> Iterator[Any]:
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    ui = QFile(str(UI_FILE))
    assert ui.open(QFile.ReadOnly)
    widget = QUiLoader().load(ui)
    ui.close()
    box = widget.findChild(QtWidgets.QComboBox, "deviceComboBox")
    box.clear()  # what connectGui does for a Choice
    for choice in DEVICES:
        box.addItem(str(choice))
    yield box
    widget.deleteLater()
    app.processEvents()


def test_every_device_choice_has_translatable_words() -> None:
    texts = widget_device_texts()
    assert list(texts) == list(DEVICES)
    assert texts["mps"] == "Apple GPU (MPS)" and "CPU" in texts["auto"]


def test_the_box_shows_the_words_and_still_reads_the_choice(device_box: Any) -> None:
    texts = widget_device_texts()
    show_choice_texts(device_box, DEVICES, texts)
    show_choice_texts(device_box, DEVICES, texts)  # connectGui again on the next parameter node: still fine
    assert [device_box.itemText(i) for i in range(device_box.count())] == [texts[d] for d in DEVICES]
    device_box.setCurrentIndex(DEVICES.index("mps"))
    assert DEVICES[device_box.currentIndex()] == "mps"  # what the connector's read() returns


def test_a_box_that_is_not_the_choices_is_refused(device_box: Any) -> None:
    texts = widget_device_texts()
    device_box.addItem("rocm")
    with pytest.raises(RuntimeError, match="more items than the 4 choices"):
        show_choice_texts(device_box, DEVICES, texts)
    device_box.removeItem(4)
    device_box.setItemText(1, "cuda")
    with pytest.raises(RuntimeError, match="item 1 reads 'cuda', not the choice 'cpu'"):
        show_choice_texts(device_box, DEVICES, texts)
