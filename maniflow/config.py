"""One typed configuration tree, and the command line made from it.

Every option of the pipeline is a field of a frozen pydantic dataclass, defined once with its
default and help text (`setting`). The same classes are what the library functions take, what
the Prefect flows take as parameters (the UI form shows every field with its help) and what the
CLI exposes: `add_options` turns a class into argparse options and `from_args` turns the parsed
options back into the class, nested classes included.

The classes themselves: maniflow.settings and the light modules it names (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import pydantic
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from pydantic.fields import FieldInfo

# Frozen, validated on construction (a Prefect parameter or a CLI value of the wrong type fails
# with the field's name), unknown keys refused (a typo is an error, not a silent default).
config = _pydantic_dataclass(frozen=True, config=pydantic.ConfigDict(extra="forbid"))


@dataclasses.dataclass(frozen=True)
class CLI:
    """How the command line shows a field (kept in the field's metadata, out of the JSON schema)."""

    flag: str | None = None  # option name (default: the field name with dashes)
    choices: Callable[[], tuple] | tuple | None = None  # allowed values; a callable reads a registry
    show: bool = True  # False: the command sets it, not the user
    parse: Callable[[str], Any] | None = None  # reads the option's text (default: from the type)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable | None = None,
            **cli) -> Any:
    """A configuration field: its default, its help text and (keywords of `CLI`) its option."""
    kwargs = {"default_factory": factory} if factory else (
        {} if default is dataclasses.MISSING else {"default": default})
    info = pydantic.Field(description=help, **kwargs)
    info.metadata.append(CLI(**cli))
    return info


def fields(cls) -> dict[str, FieldInfo]:
    return cls.__pydantic_fields__


def is_config(annotation) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation) \
        and hasattr(annotation, "__pydantic_fields__")


def csv(text: str) -> tuple[str, ...]:
    """Comma-separated values, blanks dropped."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


# -- the command line ----------------------------------------------------------------------------

def _cli(info: FieldInfo) -> CLI:
    return next((m for m in info.metadata if isinstance(m, CLI)), CLI())


def _unwrap(annotation):
    """X of `X | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _reader(annotation) -> Callable[[str], Any]:
    """How an option's text becomes the field's type: comma-separated for tuples and lists."""
    base = _unwrap(annotation)
    if typing.get_origin(base) in (tuple, list):
        item = (typing.get_args(base) or (str,))[0]
        return lambda text: tuple(item(x) for x in csv(text))
    return base if base in (int, float, str) else str


def add_options(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (), prefix: str = "",
                required: tuple[str, ...] = (), base=None) -> None:
    """Add one option per field of `cls` (nested config classes flattened; `prefix` + field name
    is the parsed attribute). Defaults are those of `base` (default: `cls()`), so a nested
    class shows its parent's default for it; `required` fields must be given."""
    base = cls() if base is None else base
    for name, info in fields(cls).items():
        cli = _cli(info)
        if name in skip or not cli.show:
            continue
        annotation = info.annotation
        default = getattr(base, name)
        if is_config(annotation):
            add_options(parser, annotation, prefix=f"{prefix}{name}.", skip=skip, base=default)
            continue
        flag = "--" + (cli.flag or name).replace("_", "-")
        choices = cli.choices() if callable(cli.choices) else cli.choices
        help_text = info.description or ""
        if name in required:
            kwargs: dict[str, Any] = {"dest": prefix + name, "required": True}
        else:
            kwargs = {"dest": prefix + name, "default": default}
            shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
            if isinstance(default, bool):
                shown = "yes" if default else "no"
            if shown not in (None, "", ()) and "(default" not in help_text:
                help_text = f"{help_text} (default {shown})"
        if _unwrap(annotation) is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **kwargs)
        else:
            parser.add_argument(flag, type=cli.parse or _reader(annotation), choices=choices,
                                metavar=None if choices else flag[2:].upper(), help=help_text, **kwargs)


def from_args(cls, args: argparse.Namespace, prefix: str = "", **given):
    """The config `cls` from parsed options (fields the CLI does not show keep their default,
    or take `given`)."""
    values = dict(given)
    parsed = vars(args)
    for name, info in fields(cls).items():
        if name in values:
            continue
        if is_config(info.annotation):
            values[name] = from_args(info.annotation, args, prefix=f"{prefix}{name}.")
        elif prefix + name in parsed:
            values[name] = parsed[prefix + name]
    return cls(**values)
