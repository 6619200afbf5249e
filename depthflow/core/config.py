"""Options dataclasses: one base class, one validation style, one ``key=value`` parser.

Every options dataclass of depthflow (``AnalyzeConfig``, ``PhaseConfig``,
``DynamicsConfig``, ``FitConfig``, ``ViTConfig``, ``RaptorConfig``, ``Preprocessing``)
derives from :class:`Options`: it is validated when constructed and when replaced
(``validate`` raises :class:`~depthflow.errors.ConfigError` naming the field, what was
expected and what came), serialises with ``to_dict``/``to_json``/``from_dict``, and takes
the CLI's ``--set KEY=VALUE`` overrides through :meth:`Options.with_overrides`.

Values are parsed by the type of the field's current value: ``int``, ``float``, ``bool``
(``true/false/1/0/yes/no``), ``str``, ``None`` (``none``), and tuples (comma-separated items,
each parsed like the first item of the default, or as a number when the default is empty
or ``None``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

from depthflow.errors import ConfigError

T = TypeVar("T")
O = TypeVar("O", bound="Options")


class Options:
    """Base of every options dataclass (subclasses are ``@dataclasses.dataclass``)."""

    _what = "option"            # how an override key is named in errors

    def __post_init__(self) -> None:
        self.validate()

    def validate(self: O) -> O:
        """Check every field (and normalise, e.g. lists to tuples); return ``self``."""
        return self

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)         # frozen dataclasses too

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[O], data: Mapping[str, Any]) -> O:
        return cls(**known_keys(cls, data, what=f"{cls._what} keys"))

    def replace(self: O, **changes: Any) -> O:
        return dataclasses.replace(self, **changes)

    def with_overrides(self: O, pairs: Iterable[str]) -> O:
        """A validated copy with each ``"key=value"`` of ``pairs`` applied."""
        return apply_overrides(self, pairs, what=self._what)


def check_int(value: Any, name: str, *, minimum: int = 1, optional: bool = False) -> int | None:
    """An integer ``>= minimum`` (``None`` allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}"
                          f"{' or None' if optional else ''}, got {value!r}")
    return int(value)


def check_number(value: Any, name: str, *, low: float | None = None,
                 high: float | None = None, open_low: bool = False) -> float:
    """A real number in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating)) \
        and value == value
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        span = f"{'(' if open_low else '['}{low if low is not None else '-inf'}, " \
               f"{high if high is not None else 'inf'}]"
        raise ConfigError(f"{name} must be a number in {span}, got {value!r}")
    return float(value)


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
    return value

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
    for key, text in parse_assignments(pairs, what=f"{what} override").items():
        if key not in fields:
            raise ConfigError(f"unknown {what} {key!r}; known: {', '.join(sorted(fields))}")
        like = getattr(config, key)
        if like is None and "tuple" in str(fields[key].type):
            like = ()                                   # an optional tuple field
        changes[key] = (None if text.strip().lower() == "none"
                        else parse_value(text, like, key))
    return dataclasses.replace(config, **changes)


def parse_assignments(pairs: Iterable[str], *, what: str = "option") -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}`` (values still text)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, text = str(pair).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{what} must look like key=value, got {pair!r}")
        out[key] = text
    return out


def known_keys(cls: type, data: Mapping[str, Any], *, what: str) -> dict[str, Any]:
    """``data`` as a dict when every key is a field of dataclass ``cls``; otherwise a
    :class:`ConfigError` naming the unknown ``what`` and the known ones (``from_dict``)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; expected a subset of {sorted(known)}")
    return dict(data)
