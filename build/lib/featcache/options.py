"""How a config declares its options, and the one check they all get.

Every user-facing config is a frozen dataclass whose fields are declared with `option(...)`: a
default, a one-line help, and where it applies a range or choices. `check_fields(config)` (each
config's `__post_init__` calls it) refuses a bad value with one line naming the field, so
`fc.fit_head(dropout=1.2)` and `cli.py fit-head --dropout 1.2` fail with the same message: the
command line's options are generated from the same fields (cli.py) and hand their values to the
same constructor. Like scikit-learn's `validate_params`, but on the config, where the defaults live.
"""

from __future__ import annotations

from featcache.errors import UserError

import dataclasses
import functools
import re
import typing
from pathlib import Path


class ConfigError(UserError, ValueError):
    """A value outside its field's type, range or choices: one line naming the field."""


def option(default=dataclasses.MISSING, help: str = "", *, range: tuple | None = None, choices=None,
           pattern: tuple[str, str] | None = None, flag: str | None = None, cli: bool = True, factory=None):
    """A config field. `range`: (low, high), inclusive; `choices`: a tuple, or a callable giving one
    (registries imported only when checked; for a tuple field, each item's); `pattern`: (a regular
    expression the whole value matches, what it means in words);
    `flag`: the command-line name when it is not --<field-name> (then any old names, space-separated); `cli`: False for a field the
    command line does not offer (set by the library itself)."""
    metadata = {"help": help, "range": range, "choices": choices, "pattern": pattern, "flag": flag, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@functools.cache
def _types(cls) -> dict:
    return typing.get_type_hints(cls)


def base_type(annotation):
    """int for `int | None`, str for `tuple[str, ...]`, ...: what one value of the field is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        return args[0] if args else str
    if args and origin is not None:  # a Union
        return base_type(args[0])
    return annotation


def many(annotation) -> bool:
    """A field of several values: `tuple[...]`, also `tuple[...] | None`."""
    return any(typing.get_origin(a) in (tuple, list) for a in (annotation, *typing.get_args(annotation)))


def choices_of(f: dataclasses.Field) -> tuple | None:
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def _coerce(name: str, value, kind, owner: str):
    """The value as the field's type: an int where a float is expected, a str for a Path, a list for a
    tuple. A bool is never a number here (True is not 1 epoch)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    if isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool)):
        return value
    raise ConfigError(f"{name}={value!r}: expected {kind.__name__} ({owner})")


def check_fields(config) -> None:
    """Coerce and check every field of a frozen dataclass made of `option`s; ConfigError otherwise."""
    owner = type(config).__name__
    for f in dataclasses.fields(config):
        if "help" not in f.metadata:
            continue
        value, annotation = getattr(config, f.name), _types(type(config))[f.name]
        if dataclasses.is_dataclass(value):  # a nested config checked itself when it was made
            continue
        if value is None and (f.default is None or type(None) in typing.get_args(annotation)):
            continue
        kind = base_type(annotation)
        if many(annotation):
            if isinstance(value, str):
                value = tuple(v for v in value.split(",") if v)
            elif not isinstance(value, (tuple, list)):  # one value where several may be
                value = (value,)
            items = tuple(_coerce(f.name, v, kind, owner) for v in value)
            object.__setattr__(config, f.name, items)
        else:
            items = (_coerce(f.name, value, kind, owner),)
            object.__setattr__(config, f.name, items[0])
        for item in items:
            _check_value(f, item, owner)


def _check_value(f: dataclasses.Field, value, owner: str) -> None:
    choices, bounds, pattern = choices_of(f), f.metadata.get("range"), f.metadata.get("pattern")
    if pattern is not None and not re.fullmatch(pattern[0], str(value)):
        raise ConfigError(f"{f.name}={value!r}: expected {pattern[1]} ({owner})")
    if choices is not None and value not in choices:
        raise ConfigError(f"{f.name}={value!r}: choose from {', '.join(map(str, choices))} ({owner})")
    if bounds is not None:
        low, high = bounds
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{f.name}={value!r}: must be in [{'-inf' if low is None else low}, "
                              f"{'inf' if high is None else high}] ({owner})")


def known(cls, options: dict) -> dict:
    """`options` when every key is a field of `cls`; ConfigError naming the unknown ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(names)}")
    return options


DEVICE = (r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def option_help(f: dataclasses.Field) -> str:
    """The field's help with its choices, range and default, as `--help` shows it."""
    parts = [f.metadata.get("help", "")]
    choices, bounds, default = f.metadata.get("choices"), f.metadata.get("range"), default_of(f)
    if choices is not None and not callable(choices):  # a registry's keys: its help names them (no import here)
        parts.append(f"Choices: {', '.join(map(str, choices))}.")
    if bounds is not None:
        parts.append(f"Range: {bounds[0] if bounds[0] is not None else '-inf'} to {bounds[1] if bounds[1] is not None else 'inf'}.")
    if default not in (None, (), False, ""):
        parts.append(f"Default: {','.join(map(str, default)) if isinstance(default, tuple) else default}.")
    return " ".join(p for p in parts if p)


def nested(cls) -> dict[str, type]:
    """The fields of `cls` that are configs themselves (E2EConfig.head): name -> their class."""
    hints = _types(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def from_flat(cls, values: dict):
    """`cls` from flat values: a nested config's fields (fusion, dropout, ...) go into it, so the
    command line, the Python API and a saved flat config.json all name a field the same way."""
    inner = nested(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    routed: dict = {k: v for k, v in values.items() if k in own}
    for name, sub in inner.items():
        mine = {k: v for k, v in values.items() if k in sub.__dataclass_fields__}
        if mine:
            base = values.get(name)
            base = dataclasses.asdict(base) if dataclasses.is_dataclass(base) else dict(base or {})
            routed[name] = sub(**{**base, **mine})
        elif isinstance(routed.get(name), dict):
            routed[name] = sub(**routed[name])
    unknown = sorted(set(values) - own - {k for sub in inner.values() for k in sub.__dataclass_fields__})
    if unknown:
        names = sorted(own - set(inner)) + sorted(k for sub in inner.values() for k in sub.__dataclass_fields__)
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(names)}")
    return cls(**routed)


def flat(config) -> dict:
    """The config's values with nested configs' fields inlined: what from_flat() takes back."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out.update(flat(value) if dataclasses.is_dataclass(value) else {f.name: value})
    return out


def cli_fields(cls) -> list[tuple[dataclasses.Field, object]]:
    """(field, its type) of each option the command line offers, nested configs' inlined, in
    declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name in nested(cls):
            out += cli_fields(nested(cls)[f.name])
        elif f.metadata.get("cli", False):
            out.append((f, _types(cls)[f.name]))
    return out
