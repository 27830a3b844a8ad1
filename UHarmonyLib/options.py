"""Each command's options, described once: its parser, its typed config and equivalent command lines come from it.

Standard library only, so the Slicer module writes the engine's command lines from the
same descriptions the engine parses, before torch is installed. A dataclass puts a
field on the command line with `field(..., metadata=cli(Option(...)))`; the field's
name and default then are the option's dest and default, so the field is the one
description of that setting (`option(default, Option(...))` says the same for a field
with a plain default).
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Config = TypeVar("Config", bound=DataclassInstance)

T = TypeVar("T")

CLI = "uharmony.option"  # the dataclass field metadata key that holds the field's Option
Verbs = argparse._SubParsersAction  # where each command adds its parser (no TypeAlias: Slicer 5.8 runs Python 3.9)


@dataclass(frozen=True)
class Option:
    """One command-line option (or positional argument), as argparse takes it, and how to write a value back."""

    flag: str  # "--out"; a name without leading dashes is a positional argument
    dest: str = ""  # the parsed attribute (a config's field name); "" derives it from the flag
    type: Callable[[str], Any] | None = None
    default: Any = None
    help: str | None = None
    metavar: str | None = None
    choices: Sequence[Any] | None = None
    nargs: int | Literal["?", "*", "+"] | None = None
    action: Literal["store", "store_true", "append"] = "store"
    required: bool = False
    group: str = ""  # options with the same group name exclude one another
    encode: Callable[[Any], Any] | None = None  # a config's value -> the value the parser gives (e.g. dict -> list)

    def __post_init__(self) -> None:
        if not self.dest:
            object.__setattr__(self, "dest", self.flag.lstrip("-").replace("-", "_"))
        if self.action == "store_true" and self.default is None:
            object.__setattr__(self, "default", False)

    @property
    def positional(self) -> bool:
        return not self.flag.startswith("-")

    @property
    def many(self) -> bool:
        """The parsed value is a list (repeated option or several words)."""
        return self.action == "append" or self.nargs in ("*", "+") or isinstance(self.nargs, int)

    def argparse_kwargs(self) -> dict[str, Any]:
        """`add_argument`'s keywords; argparse refuses some (a flag's type, a positional's dest) even when None."""
        kwargs: dict[str, Any] = {"action": self.action, "default": self.default, "help": self.help}
        if self.action != "store_true":
            kwargs.update(type=self.type, metavar=self.metavar, choices=self.choices, nargs=self.nargs)
        if not self.positional:
            kwargs.update(dest=self.dest, required=self.required)
        return {k: v for k, v in kwargs.items() if v is not None}

    def words(self, value: Any, keep: bool = False) -> list[str]:
        """The command-line words that give `value`; none for its default unless `keep` (a false flag: never)."""
        if self.encode is not None:
            value = self.encode(value)
        if value is None or value is False or (value == self.default and not keep):
            return []
        if self.action == "store_true":
            return [self.flag]
        items = [text(v) for v in value] if self.many else [text(value)]
        if self.positional:
            return items
        if self.action == "append":
            return [word for item in items for word in (self.flag, item)]
        return [self.flag, *items] if items else []


PROGRESS = Option("--progress", choices=("bar", "json"), default="bar", help="json: one JSON event per line")
NO_MIRROR = Option(
    "--no-mirror",
    action="store_true",
    help="one pass, no test-time mirroring (the default; kept for scripts that name it)",
    group="mirror",
)
# What the panels' "Test-time mirroring" box asks for: the single flips (each axis alone), 4 times the time of one pass.
MIRRORED_PASSES = 4
MIRROR_PASSES = Option(
    "--mirror-passes",
    type=int,
    choices=(1, 2, 4, 8),
    metavar="N",
    help="test-time mirroring passes: 1 (none), 2 (+ left-right flip), 4 (+ each axis flipped alone) or 8 (every "
    "flip); default 1: more passes bought no confident gain of 0.005 Dice (docs/RESULTS.md weighs Dice against time)",
    group="mirror",
)


def mirror_passes(args: argparse.Namespace) -> int | None:
    """The passes NO_MIRROR and MIRROR_PASSES ask for: 1 with --no-mirror, else --mirror-passes (None: the default)."""
    return 1 if args.no_mirror else args.mirror_passes


DEVICE = Option("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
PRECISION = Option("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"))


def text(value: object) -> str:
    """A value as the parser reads it back; floats in their shortest exact form, without a trailing '.0'."""
    if isinstance(value, float):
        return repr(value).removesuffix(".0")
    return str(value)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> argparse.ArgumentParser:
    """Add the options to `parser` in order; options sharing a `group` go into one mutually exclusive group."""
    groups = {name: parser.add_mutually_exclusive_group() for name in dict.fromkeys(o.group for o in options) if name}
    for option in options:
        target = groups[option.group] if option.group else parser
        target.add_argument(option.flag, **option.argparse_kwargs())
    return parser


def add_command(verbs: Verbs, name: str, help: str, options: Sequence[Option]) -> argparse.ArgumentParser:
    """The parser of command `name`, with its one-line help and its options."""
    return add_options(verbs.add_parser(name, help=help), options)


def to_argv(options: Sequence[Option], values: Mapping[str, Any], always: Collection[str] = ()) -> list[str]:
    """The words that give `values` (keyed by dest): defaults and absent keys are left out, except dests in `always`."""
    return [word for o in options if o.dest in values for word in o.words(values[o.dest], keep=o.dest in always)]


def values_of(options: Sequence[Option], args: argparse.Namespace) -> dict[str, Any]:
    """The parsed value of each option, by dest."""
    return {o.dest: getattr(args, o.dest) for o in options}


def defaults(options: Sequence[Option]) -> dict[str, Any]:
    """What the parser gives when no option is on the command line, by dest."""
    return {o.dest: o.default for o in options}


def cli(option: Option) -> dict[str, Option]:
    """Dataclass field metadata that puts the field on the command line as `option`."""
    return {CLI: option}


def option(default: T, spec: Option) -> T:
    """A dataclass field with this default that is the command-line option `spec` (the field names its dest)."""
    return field(default=default, metadata=cli(spec))


def field_options(cls: type[DataclassInstance]) -> list[Option]:
    """The options of a dataclass's command-line fields, in field order, with the field's name and default."""
    found = []
    for f in fields(cls):
        option = f.metadata.get(CLI)
        if isinstance(option, Option):
            default = option.default if f.default is MISSING else f.default
            found.append(replace(option, dest=f.name, default=default))
    return found


def from_args(cls: type[Config], args: argparse.Namespace, **converted: Any) -> Config:
    """A `cls` from its fields' parsed options; `converted` replaces parsed values that needed checking first."""
    return cls(**{**values_of(field_options(cls), args), **converted})


def shareable_path(value: str | os.PathLike[str]) -> str:
    """A path as a record others read shows it: its name (a dataset.json with its folder), never where it lived."""
    path = Path(value)
    if path.name == "dataset.json" and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name or str(value)


def shareable_command(words: Sequence[str]) -> str:
    """A command line for a model card: every path argument reduced to its name (cards travel between sites)."""
    return shlex.join(
        shareable_path(w) if not w.startswith("-") and ("/" in w or os.sep in w) else w for w in map(str, words)
    )
