"""The panel's first-use install conversation (UHarmonySlicerLib.install) with a fake Slicer host that records calls.

The fakes stand in for Slicer's dialogs, Extensions Manager, PyTorchUtils and pip, which
do not exist outside Slicer; the rules under test are the module's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slicer_helpers import MODULE_DIR  # noqa: F401  (puts the module folder on sys.path)
from UHarmonySlicerLib.install import EXTENSION_QUESTION, Host, ensure


@dataclass
class FakeSlicer:
    """Starts with `missing` packages (and torch if `torch`); installs succeed unless told otherwise."""

    missing: list[str] = field(default_factory=list)
    torch: bool = False
    extension: bool = True
    answer: bool = True
    pip_works: bool = True
    calls: list[str] = field(default_factory=list)

    def host(self, testing: bool = False) -> Host:
        return Host(
            missing=lambda: list(self.missing),
            torch_missing=lambda: self.torch,
            has_pytorch_extension=lambda: self.extension,
            confirm=self.confirm,
            install_pytorch_extension=self.install_extension,
            install_torch=self.install_torch,
            pip_install=self.pip_install,
            offer_restart=lambda message: self.calls.append(f"restart? {message}"),
            log=lambda message: self.calls.append(f"log {message}"),
            testing=testing,
        )

    def confirm(self, question: str) -> bool:
        self.calls.append("ask extension" if question == EXTENSION_QUESTION else "ask packages")
        return self.answer

    def install_extension(self) -> bool:
        self.calls.append("extension")
        self.extension = True
        return True

    def install_torch(self) -> bool:
        self.calls.append("torch")
        self.torch = False
        return True

    def pip_install(self, lines: list[str]) -> None:
        self.calls.append("pip " + " ".join(lines))
        if not self.pip_works:
            raise RuntimeError("no network")
        self.missing = [m for m in self.missing if m not in lines]


def test_nothing_missing_asks_nothing() -> None:
    fake = FakeSlicer()
    assert ensure(fake.host()) and fake.calls == []


def test_one_question_then_torch_and_pip_install() -> None:
    fake = FakeSlicer(missing=["monai>=1.3"], torch=True)
    assert ensure(fake.host())
    assert fake.calls == ["ask packages", "torch", "pip monai>=1.3"]  # PyTorchUtils is not asked to ask again


def test_a_declined_question_installs_nothing() -> None:
    fake = FakeSlicer(missing=["monai>=1.3"], torch=True, answer=False)
    assert not ensure(fake.host()) and fake.calls == ["ask packages"]


def test_a_missing_pytorch_extension_is_installed_from_the_extensions_manager() -> None:
    fake = FakeSlicer(missing=["monai>=1.3"], torch=True, extension=False)
    assert not ensure(fake.host())  # usable only after the restart the extension needs
    assert fake.calls == ["ask extension", "extension", "restart? The PyTorch extension was installed; restart "
                          "Slicer to use UHarmony."]  # fmt: skip


def test_testing_mode_never_asks_and_never_restarts() -> None:
    installs = FakeSlicer(missing=["monai>=1.3"], torch=True)
    assert ensure(installs.host(testing=True)) and installs.calls == ["torch", "pip monai>=1.3"]
    offline = FakeSlicer(missing=["monai>=1.3"], pip_works=False)
    assert not ensure(offline.host(testing=True))
    assert offline.calls == ["pip monai>=1.3", "log Installing the packages failed: no network"]
    no_extension = FakeSlicer(torch=True, extension=False)
    assert not ensure(no_extension.host(testing=True))
    assert [c for c in no_extension.calls if not c.startswith("log")] == []


def test_a_failed_install_offers_a_restart_outside_testing() -> None:
    fake = FakeSlicer(missing=["monai>=1.3"], pip_works=False)
    assert not ensure(fake.host())
    assert fake.calls[-1] == "restart? Installing the packages failed: no network"
