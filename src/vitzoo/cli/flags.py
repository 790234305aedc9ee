"""Flags generated from a config dataclass: a field is a flag of the same name (dashes for underscores), its type,
default, choices and help read from the field (`vitzoo.config.option`); parsed flags become the config again."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, Field, fields

from ..config import field_kind


def _parse_optional(kind: type):
    """A value where 'none' or 'null' means None (e.g. --clip-grad none)."""

    def parse(text: str):
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _comma_list(kind: type):
    """A comma-separated list ("1,4,8"), each item of `kind`; ints must be positive."""

    def parse(text: str) -> list:
        items = [item.strip() for item in text.split(",") if item.strip()]
        try:
            values = [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
        if not values or (kind is int and min(values) < 1):
            raise argparse.ArgumentTypeError(f"expected comma-separated positive {kind.__name__}s, got {text!r}")
        return values

    parse.__name__ = f"{kind.__name__} list"
    return parse


def _default(f: Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def add_config_arguments(parser: argparse.ArgumentParser, cls, *, skip=(), groups: dict | None = None,
                         choices: dict | None = None, layered: bool = False) -> None:  # fmt: skip
    """One flag per field of the dataclass `cls` (but `skip`).

    `groups`: field name -> the title of an argument group starting at that field; `choices`: field name -> its
    choices, where the field's metadata does not carry them. `layered`: flags the user does
    not give are left out of the namespace (argparse.SUPPRESS), so that they do not override a lower layer (a recipe
    file under training's flags).
    """
    hints = typing.get_type_hints(cls)
    target = parser
    for f in fields(cls):
        if f.name in skip or not f.init:
            continue
        if groups and f.name in groups:
            target = parser.add_argument_group(groups[f.name])
        meta = f.metadata
        kind, shape, optional = field_kind(hints[f.name])
        allowed = meta.get("choices") or (choices or {}).get(f.name)
        default = _default(f)
        shown = "" if default in (MISSING, None, [], ()) or kind is bool else f" (default: {_show(default)})"
        options = {"help": (meta.get("help") or "") + shown}
        names = [meta.get("flag") or "--" + f.name.replace("_", "-")]
        if meta.get("short"):
            names.append(meta["short"])
        if meta.get("positional"):
            target.add_argument(f.name, nargs="*" if shape == "list" else None, help=options["help"],
                                metavar=f.name.upper().rstrip("S") if shape == "list" else f.name.upper())  # fmt: skip
            continue
        options["dest"] = f.name
        if kind is bool:
            if meta.get("negate"):
                names = [meta["negate"]] + (["-q"] if meta["negate"] == "--quiet" else [])
                options.update(action="store_false")
            else:
                options.update(action=argparse.BooleanOptionalAction)
        else:
            if shape == "list":
                options["type"] = _comma_list(kind)
            else:
                options["type"] = _parse_optional(kind) if optional and layered else kind
                if isinstance(shape, int):
                    options.update(nargs=shape, metavar=f.name.upper())
            if allowed:
                options["choices"] = allowed
        if layered:
            options["default"] = argparse.SUPPRESS
        elif default is MISSING:
            options["required"] = True
        else:
            options["default"] = default
        target.add_argument(*names, **options)


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def config_values(cls, args: argparse.Namespace) -> dict:
    """The fields of `cls` the parsed flags hold."""
    given = vars(args)
    return {f.name: given[f.name] for f in fields(cls) if f.init and f.name in given}
