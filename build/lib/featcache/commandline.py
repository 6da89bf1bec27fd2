"""How the command line is made from the configs: one typer option per config field (its help,
choices, range and default from featcache.options), the values given handed to the library as
keyword options, and a UserError (or a library's ValueError) printed as one line with exit code 2.
cli.py holds the commands; this, the machinery they share."""

from __future__ import annotations

import functools
import inspect
import json
import typing
from dataclasses import fields
from pathlib import Path

import typer

from featcache.data import DataSpec
from featcache.data.spec import flag
from featcache.errors import UserError
from featcache.options import ConfigError, base_type, cli_fields, many, option_help

FAILS = (UserError, ValueError, TypeError, KeyError, OSError)  # ValueError: also a library's refusal of a value


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def say(message: str) -> None:
    typer.echo(message, err=True)


def emit(doc: dict) -> None:
    typer.echo(json.dumps(doc, default=str))


def next_step(text: str) -> None:
    typer.echo(f"next: {text}")


def _typer_type(annotation):
    kind = base_type(annotation)
    return list[str] if many(annotation) else (kind if kind in (bool, int, float, Path) else str)


def _flags(f, annotation) -> tuple[str, ...]:
    if f.metadata.get("flag"):
        return tuple(f.metadata["flag"].split())  # the name, then any old name kept for a release
    name = f.name.replace("_", "-")
    return (f"--{name}/--no-{name}",) if base_type(annotation) is bool else (f"--{name}",)


def _values(f, annotation, given: list[str]) -> tuple:
    """A repeated or comma-separated option as the field's items (a bad item: the config's message)."""
    kind, items = base_type(annotation), [v for item in given for v in item.split(",") if v]
    try:
        return tuple(kind(v) for v in items)
    except ValueError:
        raise ConfigError(f"{f.name}={','.join(items)!r}: expected {kind.__name__}s") from None


def configured(*configs, data: bool = False, data_required: bool = True):
    """One option per field of `configs` (and of DataSpec with `data`), each None unless given; the
    command gets `options`, the values given, and `data`, a DataSpec or None. A value the library
    refuses, and any UserError of the call, ends the command with its one line."""
    specs = [spec for cfg in configs for spec in cli_fields(cfg)]

    def wrap(command):
        params = [p for p in inspect.signature(command).parameters.values() if p.name not in ("options", "data")]
        extra = [inspect.Parameter(f"o_{f.name}", inspect.Parameter.KEYWORD_ONLY, annotation=_typer_type(t),
                                   default=typer.Option(None, *_flags(f, t), help=option_help(f), show_default=False))
                 for f, t in specs]
        spec_fields = [f for f in fields(DataSpec) if f.name != "source"] if data else []
        if data:
            extra.append(inspect.Parameter("data", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Option(
                ... if data_required else None, envvar="FEATCACHE_DATA", show_envvar=True,
                help=DataSpec.__dataclass_fields__["source"].metadata["help"] + " Default: $FEATCACHE_DATA.")))
            hints = typing.get_type_hints(DataSpec)
            extra += [inspect.Parameter(f"spec_{f.name}", inspect.Parameter.KEYWORD_ONLY, annotation=_typer_type(hints[f.name]),
                                        default=typer.Option(None, flag(f.name), help=f.metadata["help"],
                                                             rich_help_panel="Data")) for f in spec_fields]

        @functools.wraps(command)
        def wrapped(**kwargs):
            try:
                options = {}
                for f, t in specs:
                    value = kwargs.pop(f"o_{f.name}")
                    if value not in (None, [], ()):
                        options[f.name] = _values(f, t, value) if _typer_type(t) == list[str] else value
                spec = None
                if data:
                    given = {f.name: kwargs.pop(f"spec_{f.name}") for f in spec_fields}
                    source = kwargs.pop("data")
                    if source is None and any(v not in (None, [], ()) for v in given.values()):
                        fail("table options need --data (or $FEATCACHE_DATA)")
                    spec = DataSpec.of(source=source, **given) if source is not None else None
                return command(options=options, **({"data": spec} if data else {}), **kwargs)
            except FAILS as e:
                fail(str(e).strip("'\""))

        wrapped.__signature__ = inspect.Signature([*params, *extra])
        return wrapped
    return wrap


def json_flag():
    return typer.Option(False, "--json", help="Print one JSON object (and nothing else on stdout).")


def where(options: dict) -> str:
    """The --cache/--runs a next step needs when they were given."""
    return "".join(f" --{k} {options[k]}" for k in ("cache", "runs") if k in options)


def data_flags(data: DataSpec | None) -> str:
    return data.flags() if data is not None else ""
