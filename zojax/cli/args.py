"""The ``finetune`` flags, derived from the configuration dataclasses (:mod:`zojax.train.config`).

Every field of a :class:`~zojax.train.config.TrainConfig` section is one flag: its name
(:func:`~zojax.train.config.flag`), help, choices, metavar and parser come from the field's metadata
(:func:`~zojax.train.config.option`), its type from the annotation, its default from the field (shown
as ``(default: X)``); a section is an argument group. ``dest`` is ``"section.field"``.

Why derived argparse and not ``tyro`` or ``draccus``: the flags must stay exactly what runs, sweeps and
the README already use (``--model`` for ``model.name``, ``--eval-token-budget`` for
``eval.token_budget``, ``--x``/``--no-x`` pairs), ``--resume`` needs to know which flags were given
explicitly (every default here is ``SUPPRESS``, so the namespace holds only those), and a bad value
must end in one ``zojax finetune: error: --flag: ...`` line; both libraries derive their own flag
names and error output and would be a new dependency for what these 60 lines do.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from zojax.train import config as C


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per configuration field to ``parser``, one argument group per section."""
    for section, cls in C.SECTIONS.items():
        group = parser.add_argument_group(cls.TITLE)
        exclusive: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key, meta = f"{section}.{f.name}", f.metadata
            flag = C.flag(key)
            kw: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": help_text(f)}
            kind = _base_type(hints[f.name])
            if kind is bool:
                kw["action"] = meta.get("action", argparse.BooleanOptionalAction)
            else:
                kw["type"] = meta.get("parse", _csv if kind is tuple else kind)
                if "choices" in meta and "metavar" not in meta:
                    kw["choices"] = meta["choices"]
                else:
                    kw["metavar"] = meta.get("metavar", flag.lstrip("-").upper().replace("-", "_"))
            if "exclusive" in meta and meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = group.add_mutually_exclusive_group()
            exclusive.get(meta.get("exclusive"), group).add_argument(flag, **kw)


def help_text(f: dataclasses.Field) -> str:
    """The field's help, its choices when the usage line does not show them, and its default."""
    meta = f.metadata
    text = meta["help"]
    if "choices" in meta and "metavar" in meta:
        text += "; one of: " + ", ".join(meta["choices"])
    default = meta.get("default_help", f.default)
    if default is not None and meta.get("action") != "store_true":
        text += f" (default: {_show(default)})"
    return text.replace("%", "%%")  # argparse formats help with %


def explicit_options(ns: argparse.Namespace) -> dict[str, Any]:
    """``{"section.field": value}`` of the configuration flags given on the command line."""
    known = C.fields()
    return {k: v for k, v in vars(ns).items() if k in known}


def config_from_options(options: dict[str, Any]) -> C.TrainConfig:
    """A (not yet resolved) config with ``options`` (``{"section.field": value}``) over the defaults."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return C.from_dict(nested)


def _base_type(t: Any) -> type:
    if isinstance(t, types.UnionType):  # ``int | None``
        (t,) = (a for a in typing.get_args(t) if a is not type(None))
    return typing.get_origin(t) or t


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())
