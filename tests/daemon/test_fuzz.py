"""Fuzzing the daemon's framing and request decoding with hypothesis (about 20 s in all):
random bytes, valid requests with mutated bytes, maps of request-like fields with values of
any type, deep nesting, wrong lengths and arbitrary cuts, before and after the hello. The
invariants are checked in ``fuzz_harness.run_session``; a longer campaign:
``python -m bench fuzz_daemon``."""

from __future__ import annotations

from fuzz_harness import VALID, run_session, streams
from hypothesis import HealthCheck, given, settings

from emulator.daemon import protocol as p

FUZZ = settings(max_examples=700, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(streams())
def test_fuzzed_stream_before_hello(chunks):
    replies = run_session(chunks, authenticate=False)
    assert not any(isinstance(r, p.Welcome) for r in replies)  # no token, no session


@FUZZ
@given(streams())
def test_fuzzed_stream_after_hello(chunks):
    run_session(chunks, authenticate=True)


def test_harness_sees_valid_requests_answered():
    """The harness is not vacuous: valid requests get their replies through it."""
    chunks = [len(b).to_bytes(4, "big") + b for b in map(p.encoder.encode, VALID)]
    replies = run_session(chunks, authenticate=True)
    assert isinstance(replies[0], p.Welcome)
    ids = {getattr(r, "id", None) for r in replies[1:]}
    assert {1, 2, 3, 9} <= ids
