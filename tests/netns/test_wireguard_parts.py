"""The sans-I/O parts of examples/wireguard-qkd: ICMP checksum and echo parsing, the control
line's messages and its out-of-turn errors (no root needed)."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import msgspec
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wireguard-qkd"


def load(name: str):
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLE))


def test_internet_checksum_rfc1071_example() -> None:
    ping = load("icmp_ping")
    # RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2 after the carry: checksum 220d
    assert ping.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    request = ping.echo_request(0x1234, 7, b"qnet" * 3)
    assert ping.checksum(request) == 0  # a correct checksum makes the whole sum 0xffff


def test_echo_reply_parsing() -> None:
    ping = load("icmp_ping")
    icmp = struct.pack("!BBHHH", ping.ECHO_REPLY, 0, 0, 0x1234, 9) + b"data"
    ipv4 = bytes([0x45]) + bytes(19)  # 20-byte header, fields irrelevant here
    assert ping.parse_reply(ipv4 + icmp, 0x1234) == 9
    assert ping.parse_reply(ipv4 + icmp, 0x4321) is None  # another stream's reply
    request = struct.pack("!BBHHH", ping.ECHO_REQUEST, 0, 0, 0x1234, 9)
    assert ping.parse_reply(ipv4 + request, 0x1234) is None
    assert ping.parse_reply(ipv4[:10], 0x1234) is None


def test_control_messages_round_trip_and_refuse_out_of_turn() -> None:
    rotate = load("rotate")
    for message in (rotate.Hello("a2V5", 51820), rotate.Rotate(3, "id-3"),
                    rotate.Installed(3, "ab" * 32), rotate.Done()):
        assert rotate.DECODER.decode(rotate.ENCODER.encode(message)) == message
    with pytest.raises(msgspec.ValidationError):
        rotate.DECODER.decode(b'{"type": "rotate", "epoch": "three", "key_ID": "x"}')
    with pytest.raises(rotate.PeerProtocolError, match="expected Installed of epoch 2"):
        rotate.expect(rotate.Installed(1, "00"), rotate.Installed, 2)
    with pytest.raises(rotate.PeerProtocolError, match="expected Hello"):
        rotate.expect(rotate.Done(), rotate.Hello)
