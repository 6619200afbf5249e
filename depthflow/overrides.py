"""``key=value`` overrides of configuration dataclasses (the CLI's ``--set`` options).

Values are parsed by the type of the field's current value: ``int``, ``float``, ``bool``
(``true/false/1/0/yes/no``), ``str``, ``None`` (``none``), and tuples (comma-separated items,
each parsed like the first item of the default, or as a number when the default is empty
or ``None``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _scalar(text: str, like: Any, key: str) -> Any:
    if text.lower() == "none":
        return None
    try:
        if isinstance(like, bool):
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if like is None:                 # unknown type: a number when it parses as one
            for cast in (int, float):
                try:
                    return cast(text)
                except ValueError:
                    pass
        return text
    except ValueError:
        raise ConfigError(f"{key}: cannot read {text!r} as {type(like).__name__}") from None


def parse_value(text: str, like: Any, key: str = "value") -> Any:
    """Parse ``text`` as a value of the same kind as ``like``."""
    if isinstance(like, (tuple, list)):
        if text.strip() == "":
            return ()
        item = like[0] if like else None
        return tuple(_scalar(part.strip(), item, key) for part in text.split(","))
    return _scalar(text.strip(), like, key)


def apply_overrides(config: T, pairs: Iterable[str], *, what: str = "option") -> T:
    """A copy of dataclass ``config`` with each ``"key=value"`` of ``pairs`` applied.

    Raises :class:`ConfigError` for a malformed pair or an unknown key (naming the known
    ones).
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = str(pair).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{what} override must look like key=value, got {pair!r}")
        if key not in fields:
            raise ConfigError(f"unknown {what} {key!r}; known: {', '.join(sorted(fields))}")
        like = getattr(config, key)
        if like is None and "tuple" in str(fields[key].type):
            like = ()                                   # an optional tuple field
        changes[key] = (None if text.strip().lower() == "none"
                        else parse_value(text, like, key))
    return dataclasses.replace(config, **changes)


def known_keys(cls: type, data: Mapping[str, Any], *, what: str) -> dict[str, Any]:
    """``data`` as a dict when every key is a field of dataclass ``cls``; otherwise a
    :class:`ConfigError` naming the unknown ``what`` and the known ones (``from_dict``)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; expected a subset of {sorted(known)}")
    return dict(data)
