"""`train --compile`: the training step's forward under torch.compile, the weights kept on the plain network.

torch.compile wraps a module in an OptimizedModule whose state_dict keys carry an `_orig_mod.`
prefix. The trainer calls the wrapper in its steps and reads and writes the plain network
everywhere else (checkpoints, validation, the bundle), so a compiled run stores the same keys
as any other and its bundle loads without compiling.

Shapes are static (every step has the same patch and batch size), hence `dynamic=False`. The
network does not compile as one graph: each harmony layer asks whether the batch shares its
site weights (a Python bool of a tensor) and the gate's histograms keep the foreground voxels
(a data-dependent shape), so the graph breaks there and the pieces in between are compiled
(the default network: 94 breaks, 90 graphs). With residual site rows every harmony layer is a
class of its own (torch.nn.utils.parametrize makes one per module), so each needs its own
compiled variant of the same code: PyTorch's default recompile limit (8) left 16 of the default
network's 24 harmony layers running uncompiled; the limit is raised to one variant per module.
"""

from __future__ import annotations

import platform
from typing import Any

import torch
import torch._dynamo
from torch import nn

from UHarmonyLib.errors import InputError

# renamed in PyTorch 2.6; the project supports 2.3 and later
LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def check_compile() -> None:
    """One line, before any data is read, where this Python and PyTorch cannot run torch.compile at all."""
    if not torch._dynamo.is_dynamo_supported():
        raise InputError(
            f"--compile: torch.compile does not support Python {platform.python_version()} with PyTorch "
            f"{torch.__version__}; leave out --compile"
        )


class CompiledStep(nn.Module):
    """`model` (the network, or DDP around it) compiled; a compiler that fails on its first call is one line."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(model, dynamic=False)
        self.limit = max(len(list(model.modules())), int(getattr(torch._dynamo.config, LIMIT)))

    def forward(self, *args: Any) -> Any:
        with torch._dynamo.config.patch({LIMIT: self.limit}):
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as e:
                reason = str(e).strip().splitlines()[0]
                raise InputError(f"--compile: torch.compile failed here ({reason}); leave out --compile") from e
