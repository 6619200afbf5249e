"""key=value overrides of configuration dataclasses."""

import dataclasses

import pytest

from depthflow.errors import ConfigError
from depthflow.core.config import apply_overrides


@dataclasses.dataclass
class _Cfg:
    steps: int = 10
    rate: float = 0.5
    flag: bool = False
    name: str = "a"
    layers: tuple[int, ...] | None = None
    angles: tuple[float, ...] = (0.1,)
    limit: int | None = 5


def test_values_are_parsed_by_the_type_of_the_field():
    cfg = apply_overrides(_Cfg(), ["steps=3", "rate=1e-3", "flag=yes", "name=b",
                                   "layers=1,-1", "angles=0.05,0.2", "limit=none"])
    assert cfg == _Cfg(steps=3, rate=1e-3, flag=True, name="b", layers=(1, -1),
                       angles=(0.05, 0.2), limit=None)
    assert apply_overrides(_Cfg(), ["layers=4"]).layers == (4,)
    assert apply_overrides(_Cfg(), []) == _Cfg()


@pytest.mark.parametrize("pair, match", [("steps", "key=value"), ("nope=1", "unknown option"),
                                         ("steps=x", "cannot read"), ("flag=maybe",
                                                                      "cannot read")])
def test_bad_overrides_are_one_clear_error(pair, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(_Cfg(), [pair])
