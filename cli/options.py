"""What every depthflow command shares: error handling, the command line, shared options,
and options generated from a configuration dataclass.

Option-to-config mapping is done one way: each field of a command's options dataclass
(:class:`~depthflow.analysis.run.AnalyzeConfig`, :class:`~depthflow.phases.analysis.
PhaseConfig`, :class:`~depthflow.raptor.config.FitConfig`) becomes ``--field-name`` (booleans
``--name/--no-name``, tuples as comma lists), with the help text of the dataclass's
``_help``; the plug-ins of ``analyze`` take ``--set ANALYSIS.KEY=VALUE``. Exit codes: 2 for
usage errors (bad options), 1 for data errors (checkpoints, images, outputs).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import click

from depthflow.core._signals import Interrupted, signals_as_errors
from depthflow.core.config import parse_value
from depthflow.core.environment import check_environment
from depthflow.errors import ConfigError, DepthflowError

IMAGE_SOURCES = ("'digits[:test|train|all]' (scikit-learn's digits; default: the 450 held-out), "
                 "'lfw' (scikit-image's 100 faces + 100 non-faces, labelled), 'skimage' "
                 "(20 scikit-image photos), an image folder (sub-folders = classes) or a "
                 ".npy/.npz array")


class UsageFailure(click.ClickException):
    """A bad option value: ``Error: ...`` on one line, exit code 2."""

    exit_code = 2


def one_line_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn depthflow and OS errors into one ``Error: ...`` line: exit 2 for configuration
    (usage) errors, 1 for data errors; no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with signals_as_errors():
                check_environment()
                return func(*args, **kwargs)
        except Interrupted as exc:            # SIGTERM / SIGINT: the clean-up has run
            click.echo(f"Error: {exc}; temporary files removed, no output half-written",
                       err=True)
            sys.exit(exc.exit_code)
        except DepthflowError as exc:
            if getattr(exc, "signum", None) is None:
                raise
            click.echo(f"Error: {str(exc).splitlines()[0]}", err=True)
            sys.exit(128 + int(exc.signum))

    return _one_line(wrapper)


def _one_line(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise UsageFailure(str(exc).splitlines()[0]) from None
        except DepthflowError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: "
                                       f"{exc.filename or ''}".rstrip(": ")) from None
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            sys.exit(130)

    return wrapper


def command_line() -> list[str]:
    """The exact command line of this invocation (recorded in results)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    argv = root.meta.get("depthflow.argv") if root is not None else None
    return argv or ["depthflow", *sys.argv[1:]]


images = click.option("--images", default=None, help=f"Images: {IMAGE_SOURCES}.")
overwrite = click.option("--overwrite", is_flag=True,
                         help="Replace existing output files (otherwise they are kept).")
arch = click.option("--arch", default=None,
                    help="Architecture override: preset (e.g. dinov2_vits14_reg4), JSON, or "
                         "key=value,... (e.g. num_heads=6).")
quiet = click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")


def _is_tuple(field: dataclasses.Field, hints: Mapping[str, Any]) -> bool:
    return "tuple" in str(hints.get(field.name, field.type))


def config_options(cls: type, *, exclude: Iterable[str] = (),
                   defaults: Mapping[str, Any] | None = None) -> Callable:
    """A decorator adding one option per field of dataclass ``cls`` (help from
    ``cls._help``), except ``exclude``; :func:`build_config` turns the values back."""
    exclude = set(exclude)
    base = cls()
    helps = getattr(cls, "_help", {})
    hints = typing.get_type_hints(cls)

    def decorate(func: Callable) -> Callable:
        for field in reversed(dataclasses.fields(cls)):
            if field.name in exclude:
                continue
            default = (defaults or {}).get(field.name, getattr(base, field.name))
            flag = "--" + field.name.replace("_", "-")
            text = helps.get(field.name, "")
            if isinstance(default, bool):
                option = click.option(f"{flag}/--no-{flag[2:]}", field.name, default=default,
                                      show_default=True, help=text)
            elif _is_tuple(field, hints) or default is None:
                shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
                # an unset option says so in its own help text ("unset: ..."), not "None"
                suffix = "" if default is None else f" [default: {shown}]"
                option = click.option(flag, field.name, default=None, metavar="VALUE",
                                      help=f"{text}{suffix}".strip())
            else:
                option = click.option(flag, field.name, type=type(default), default=default,
                                      show_default=True, help=text)
            func = option(func)
        return func

    return decorate


def build_config(cls: type, values: Mapping[str, Any], **fixed: Any) -> Any:
    """``cls(**fields)`` from the generated options' values (text of tuple and optional
    fields parsed like their defaults; ``None`` keeps the default) and ``fixed`` ones."""
    base = cls()
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name not in values or values[field.name] is None:
            continue
        value = values[field.name]
        if isinstance(value, str) and (_is_tuple(field, hints) or
                                       getattr(base, field.name) is None):
            like = getattr(base, field.name)
            like = () if like is None and _is_tuple(field, hints) else like
            value = None if value.strip().lower() == "none" else parse_value(value, like,
                                                                           field.name)
        kwargs[field.name] = value
    return cls(**{**kwargs, **fixed})
