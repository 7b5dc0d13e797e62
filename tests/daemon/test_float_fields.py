"""The request validator scans only the fields that can hold a float: exactly those whose
annotation mentions ``float``, and a NaN or infinity in any of them is still found."""

from __future__ import annotations

import math
import typing

import msgspec
import pytest

from emulator.daemon import protocol as p
from emulator.daemon.session import float_fields, non_finite_field

REQUESTS = typing.get_args(p.Request)


@pytest.mark.parametrize("request_type", REQUESTS, ids=lambda t: t.__name__)
def test_float_fields_are_the_annotated_floats(request_type: type) -> None:
    hints = typing.get_type_hints(request_type)
    annotated = tuple(name for name in request_type.__struct_fields__
                      if "float" in str(hints[name]) or hints[name] is typing.Any)
    assert float_fields(request_type) == annotated


def _example(value: float) -> list[msgspec.Struct]:
    return [p.QubitPrepare(id=1, theta=value),
            p.QubitGate(id=2, gate="rotate", qubits=[], axis=(0.0, value, 1.0)),
            p.PayloadSwitch(id=3, link="l", payload=1, rotation=(value, 0.0, 0.0)),
            p.SourceStart(id=4, link="l", prf_key=b"", intensities=[0.5, value])]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_found_in_scalars_tuples_and_lists(bad: float) -> None:
    for message in _example(bad):
        assert non_finite_field(message) in float_fields(type(message))
    for message in _example(0.25):
        assert non_finite_field(message) is None
