"""Why a request was refused or a run failed, as one line the panel can show."""

from __future__ import annotations


class InputRefused(ValueError):
    """The inputs do not fit the model; raised before anything is added to the scene."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class EngineError(RuntimeError):
    """The engine process failed; the message is its own one-line error."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
