"""The first-use install conversation, apart from Slicer so its rules are tested here.

Rules a real Slicer run showed were needed: the user is asked once (PyTorchUtils is then
told not to ask again); a missing PyTorch extension is installed from the Extensions
Manager, which needs a restart, instead of being answered with a restart offer that cannot
help; and in testing mode (CTest, where every dialog answers yes by itself) nothing is
asked and Slicer is never restarted. The panel passes a `Host` made of Slicer's own
calls; the tests pass small fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from UHarmonySlicerLib import dependencies


def packages_question(names: list[str]) -> str:
    return (
        "UHarmony needs these Python packages, which will now be downloaded and installed into Slicer "
        "(this can take several minutes):\n\n" + "\n".join(names) + "\n\nInstall them?"
    )


EXTENSION_QUESTION = (
    "UHarmony needs the PyTorch extension, which installs PyTorch for this computer's GPU or CPU. "
    "Install it from the Extensions Manager now? Slicer must restart afterwards."
)


@dataclass
class Host:
    """What Slicer offers for installing, one callable each."""

    missing: Callable[[], list[str]]  # pip requirements not yet satisfied (as requirement lines)
    torch_missing: Callable[[], bool]
    has_pytorch_extension: Callable[[], bool]
    confirm: Callable[[str], bool]  # one yes/no question to the user
    install_pytorch_extension: Callable[[], bool]  # from the Extensions Manager; True when installed
    install_torch: Callable[[], bool]  # through PyTorchUtils, never asking again; True when torch is there
    pip_install: Callable[[list[str]], None]  # requirement lines; raises on failure
    offer_restart: Callable[[str], None]  # a restart question (Slicer restarts on yes)
    log: Callable[[str], None]
    testing: bool = False  # CTest: no question, no restart
    ask_packages: Callable[[list[str]], str] = packages_question  # the panel passes its translated wording
    extension_question: str = EXTENSION_QUESTION


def _stop(host: Host, message: str) -> bool:
    """Report a failure; outside testing, offer the restart that completes an install."""
    host.log(message)
    if not host.testing:
        host.offer_restart(message)
    return False


def ensure(host: Host) -> bool:
    """True when the engine can run now; otherwise installs what it may and says what is left."""
    missing, need_torch = host.missing(), host.torch_missing()
    if not missing and not need_torch:
        return True
    if need_torch and not host.has_pytorch_extension():
        if host.testing:
            host.log("The PyTorch extension is missing; install it from the Extensions Manager.")
            return False
        if host.confirm(host.extension_question) and host.install_pytorch_extension():
            host.offer_restart("The PyTorch extension was installed; restart Slicer to use UHarmony.")
        return False
    names = (["PyTorch " + dependencies.TORCH_REQUIREMENT] if need_torch else []) + missing
    if not host.testing and not host.confirm(host.ask_packages(names)):
        return False
    try:
        if need_torch and not host.install_torch():
            return _stop(host, "PyTorch was not installed.")
        if missing:
            host.pip_install(missing)
    except Exception as e:  # any install failure: one message, and the restart that often completes it
        return _stop(host, f"Installing the packages failed: {e}")
    if host.missing() or host.torch_missing():
        return _stop(host, "The packages were installed but cannot be used until Slicer restarts.")
    return True
