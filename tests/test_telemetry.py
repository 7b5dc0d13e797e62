"""emulator.telemetry: payload round trips, topic layout, the bounded decoder, accounts/ACL."""

from __future__ import annotations

import json
from types import SimpleNamespace

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import telemetry
from emulator.child_config import Endpoint
from emulator.collect import collect, process_counters, progress_status
from emulator.mqtt import Message
from emulator.telemetry import (
    DaemonReport,
    LinkControl,
    NodeEvent,
    NodeMetrics,
    NodeResult,
    RelayReport,
    StartMessage,
    StopMessage,
    TelemetryDecoder,
)

RUN = "quickstart-0123abcd"

# (topic, payload) for every payload type, on the topic it travels on.
SAMPLES = [
    (telemetry.control_start(RUN), StartMessage(
        t_start=1.5, t_end=11.5, peers={"alice": {"bob": Endpoint(tcp=4001, udp=4002)}})),
    (telemetry.control_stop(RUN), StopMessage()),
    (telemetry.control_stop(RUN), StopMessage(reason="abort")),
    (telemetry.control_link(RUN, "alice-bob"), LinkControl("cut")),
    (telemetry.node_result(RUN, "bob"), NodeResult(
        node="bob", apps=[{"kind": "qkd.bb84", "secret_bits": 4096, "qber": 0.031}],
        counters={"hello_rejected": 2})),
    (telemetry.node_result(RUN, "bob"), NodeResult(node="bob", apps=[], partial=True)),
    (telemetry.node_metrics(RUN, "bob"), NodeMetrics(
        node="bob", t_emu=3.25, link="alice-bob", detections=1200, sifted_bits=600,
        qber=0.03, secret_bits=0, extra={"blocks": 1})),
    (telemetry.node_events(RUN, "bob"), NodeEvent(
        node="bob", kind="key_produced", t_emu=4.0, wall=1.7e9,
        fields={"link": "alice-bob", "bits": 512})),
    (telemetry.relay_metrics(RUN, "alice-bob"), RelayReport(
        "alice-bob", "alice", "bob", 10, 20, 3, 0)),
    (telemetry.relay_result(RUN, "alice-bob"), RelayReport(
        "alice-bob", "alice", "bob", 10, 20, 3, 1, counters={"foreign_datagrams": 4})),
    (telemetry.daemon_metrics(RUN), DaemonReport(connections=3)),
    (telemetry.daemon_result(RUN), DaemonReport(
        connections=3, rejected_connections=1, bad_frames=2,
        measurements={"alice": 0, "bob": 5000}, counters={"frames": 9})),
]


@pytest.mark.parametrize(("topic", "payload"), SAMPLES,
                         ids=[f"{type(p).__name__}-{i}" for i, (_, p) in enumerate(SAMPLES)])
def test_every_payload_round_trips_on_its_topic(topic: str, payload) -> None:
    decoder = TelemetryDecoder(RUN)
    wire = telemetry.encode(payload)
    json.loads(wire)  # plain JSON, readable with mosquitto_sub
    got = decoder.decode(topic, wire)
    assert got is not None and got.payload == payload
    assert type(got.payload) is type(payload)
    assert decoder.rejected_total == 0


def test_topics_are_under_subtrees_no_node_name_can_reach() -> None:
    # A node called "relay", "control" or "daemon" still publishes under node/<name>/.
    for name in ("relay", "control", "daemon", "node"):
        assert telemetry.node_result(RUN, name) == f"qnet/{RUN}/node/{name}/result"
        got = TelemetryDecoder(RUN).decode(telemetry.node_result(RUN, name),
                                           telemetry.encode(NodeResult(node=name, apps=[])))
        assert got is not None and (got.subtree, got.leaf, got.name) == ("node", "result", name)
    assert telemetry.relay_result(RUN, "a-b") == f"qnet/{RUN}/relay/a-b/result"
    assert telemetry.relay_metrics(RUN, "a-b") == f"qnet/{RUN}/relay/a-b/metrics"
    assert telemetry.node_metrics(RUN, "x") == f"qnet/{RUN}/node/x/metrics"
    assert telemetry.node_events(RUN, "x") == f"qnet/{RUN}/node/x/events"
    assert telemetry.daemon_result(RUN) == f"qnet/{RUN}/daemon/result"
    assert telemetry.daemon_metrics(RUN) == f"qnet/{RUN}/daemon/metrics"
    assert telemetry.control_link(RUN, "a-b") == f"qnet/{RUN}/control/link/a-b"
    assert telemetry.run_filter(RUN) == f"qnet/{RUN}/#"
    assert telemetry.control_filter(RUN) == f"qnet/{RUN}/control/#"


def test_defaults_stay_off_the_wire() -> None:
    assert telemetry.encode(StopMessage()) == b"{}"
    wire = json.loads(telemetry.encode(NodeMetrics(node="b", t_emu=1.0, qber=0.02)))
    assert wire == {"node": "b", "t_emu": 1.0, "qber": 0.02}


BAD = [
    ("deeply nested array", telemetry.node_metrics(RUN, "bob"), b"[" * 100_000 + b"]" * 100_000),
    ("deeply nested in an Any field", telemetry.node_result(RUN, "bob"),
     b'{"node": "bob", "apps": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"),
    ("not JSON", telemetry.node_metrics(RUN, "bob"), b"\xff\xfe garbage"),
    ("wrong type", telemetry.node_metrics(RUN, "bob"), b'{"node": "bob", "t_emu": "soon"}'),
    ("missing field", telemetry.node_result(RUN, "bob"), b'{"node": "bob"}'),
    ("unknown field", telemetry.node_metrics(RUN, "bob"),
     b'{"node": "bob", "t_emu": 1.0, "evil": 1}'),
    ("nested extra", telemetry.node_metrics(RUN, "bob"),
     b'{"node": "bob", "t_emu": 1.0, "extra": {"x": [1, 2]}}'),
    ("bad action", telemetry.control_link(RUN, "a-b"), b'{"action": "explode"}'),
    ("array for a stop", telemetry.control_stop(RUN), b"[]"),
    ("counters not int", telemetry.relay_result(RUN, "a-b"),
     b'{"name":"a-b","a":"a","b":"b","bytes_ab":1,"bytes_ba":1,"messages":1,"dropped":0,'
     b'"counters":{"x":1.5}}'),
]


@pytest.mark.parametrize(("what", "topic", "payload"), BAD, ids=[b[0] for b in BAD])
def test_decoder_rejects_bad_payloads_without_raising(what: str, topic: str,
                                                      payload: bytes) -> None:
    decoder = TelemetryDecoder(RUN)
    assert decoder.decode(topic, payload) is None
    assert decoder.rejected == {"bad_payload": 1}


def test_decoder_rejects_oversize_before_parsing() -> None:
    decoder = TelemetryDecoder(RUN, max_bytes=1000)
    big = telemetry.encode(NodeResult(node="bob", apps=[{"pad": "x" * 2000}]))
    assert decoder.decode(telemetry.node_result(RUN, "bob"), big) is None
    small = telemetry.encode(NodeResult(node="bob", apps=[]))
    assert decoder.decode(telemetry.node_result(RUN, "bob"), small) is not None
    assert decoder.rejected == {"oversize": 1}


@pytest.mark.parametrize("topic", [
    f"qnet/{RUN}/bob/metrics",  # the old layout
    f"qnet/{RUN}/node/bob",
    f"qnet/{RUN}/node//metrics",
    f"qnet/{RUN}/node/bob/metrics/extra",
    f"qnet/{RUN}/node/bob/status",
    f"qnet/{RUN}/relay/a-b/events",
    f"qnet/{RUN}/control/link",
    f"qnet/{RUN}/control/restart",
    f"qnet/{RUN}/daemon/x/result",
    "qnet/other-run/node/bob/metrics",
    "elsewhere",
])
def test_decoder_rejects_topics_outside_the_layout(topic: str) -> None:
    decoder = TelemetryDecoder(RUN)
    payload = telemetry.encode(NodeMetrics(node="bob", t_emu=1.0))
    assert decoder.decode(topic, payload) is None
    assert decoder.rejected == {"unknown_topic": 1}


def test_empty_payload_is_a_cleared_retained_message_not_a_reject() -> None:
    decoder = TelemetryDecoder(RUN)
    assert decoder.decode(telemetry.control_start(RUN), b"") is None
    assert decoder.rejected_total == 0


def test_credentials_are_per_process_and_fresh_per_run() -> None:
    first = telemetry.credentials(RUN, ["alice", "bob"], ["alice-bob"])
    again = telemetry.credentials(RUN, ["alice", "bob"], ["alice-bob"])
    assert set(first) == {"orchestrator", "daemon", "observer", "operator", "node.alice",
                          "node.bob", "relay.alice-bob"}
    assert all(account.username == key for key, account in first.items())
    passwords = [a.password for a in first.values()] + [a.password for a in again.values()]
    assert len(set(passwords)) == len(passwords)  # no two processes or runs share one
    assert all(len(p) >= 32 for p in passwords)


def test_acl_gives_control_to_the_orchestrator_only() -> None:
    rules = telemetry.acl(telemetry.credentials(RUN, ["relay", "control"], ["relay-control"]))
    assert rules["publish"]["orchestrator"] == [f"qnet/{RUN}/control/#"]
    assert rules["publish"]["node.relay"] == [f"qnet/{RUN}/node/relay/#"]
    assert rules["publish"]["node.control"] == [f"qnet/{RUN}/node/control/#"]
    assert rules["publish"]["relay.relay-control"] == [f"qnet/{RUN}/relay/relay-control/#"]
    assert rules["publish"]["daemon"] == [f"qnet/{RUN}/daemon/#"]
    assert rules["publish"]["observer"] == []
    assert rules["subscribe"]["orchestrator"] == [f"qnet/{RUN}/#"]
    # the observer reads the run, also as `mosquitto_sub -t 'qnet/#'` (one run per broker)
    assert rules["subscribe"]["observer"] == [f"qnet/{RUN}/#", "qnet/#"]
    # the operator (`qnet fault`) may only ask the orchestrator, which applies the fault
    assert rules["publish"]["operator"] == [f"qnet/{RUN}/request/fault"]
    # the daemon also reads the relays' measured traffic (Raman noise)
    assert rules["subscribe"]["daemon"] == [f"qnet/{RUN}/control/#",
                                            f"qnet/{RUN}/relay/+/traffic"]
    others = [u for u in rules["subscribe"]
              if u not in ("orchestrator", "observer", "daemon")]
    assert all(rules["subscribe"][u] == [f"qnet/{RUN}/control/#"] for u in others)
    publishers = [u for u, topics in rules["publish"].items()
                  if any(t.startswith(f"qnet/{RUN}/control/") for t in topics)]
    assert publishers == ["orchestrator"]


def test_progress_status_shows_running_qber_and_secret_bits() -> None:
    metrics = {
        "bob/alice-bob": msgspec.to_builtins(NodeMetrics(
            node="bob", t_emu=2.0, link="alice-bob", sifted_bits=12345, qber=0.0312,
            secret_bits=2048)),
        "alice/alice-bob": msgspec.to_builtins(NodeMetrics(node="alice", t_emu=2.0)),
        "carol/c-d": msgspec.to_builtins(NodeMetrics(
            node="carol", t_emu=2.0, link="c-d", sifted_bits=10)),
    }
    status = progress_status(metrics)
    assert "alice-bob: 12,345 sifted, QBER 0.031, 2,048 secret" in status
    assert "c-d: 10 sifted, QBER -" in status
    assert "alice:" not in status


class FakeMqtt:
    """Stands in for MqttClient: ``messages()`` yields a fixed list, then ends."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages

    async def messages(self):
        for message in self._messages:
            yield message


async def test_collect_files_typed_messages_and_counts_strangers() -> None:
    state = SimpleNamespace(
        run_id=RUN, node_results={}, relay_results={}, latest_metrics={}, events=[],
        daemon_reports={}, telemetry_rejected={}, got_result=trio.Event(),
        scenario=SimpleNamespace(nodes=[SimpleNamespace(name="bob")],
                                 links=[SimpleNamespace(id="a-b")]))
    result = NodeResult(node="bob", apps=[{"app": 0, "secret_bits": 1}], counters={"x": 2})
    relay = RelayReport("a-b", "a", "b", 1, 2, 3, 0, counters={"foreign_datagrams": 5})
    daemon = DaemonReport(connections=2, measurements={"bob": 7})
    sent = [
        (telemetry.node_result(RUN, "bob"), telemetry.encode(result)),
        (telemetry.node_result(RUN, "mallory"), telemetry.encode(result)),  # not in scenario
        (telemetry.node_metrics(RUN, "bob"), b"[" * 10_000 + b"]" * 10_000),
        (telemetry.node_metrics(RUN, "bob"), telemetry.encode(NodeMetrics(
            node="bob", t_emu=1.0, link="a-b", sifted_bits=5, qber=0.02))),
        (telemetry.node_events(RUN, "bob"), telemetry.encode(NodeEvent(
            node="bob", kind="key_produced", t_emu=2.0, wall=3.0, fields={"bits": 64}))),
        (telemetry.relay_result(RUN, "a-b"), telemetry.encode(relay)),
        (telemetry.relay_result(RUN, "x-y"), telemetry.encode(relay)),  # not in scenario
        (telemetry.daemon_result(RUN), telemetry.encode(daemon)),
        (telemetry.control_stop(RUN), telemetry.encode(StopMessage())),  # our own, echoed
        (telemetry.control_start(RUN), b""),  # our own clearing of the retained start
    ]
    await collect(FakeMqtt([Message(t, p, False) for t, p in sent]), state)
    assert state.telemetry_rejected == {"unknown_sender": 2, "bad_payload": 1}
    assert state.node_results == {"bob": msgspec.structs.asdict(result)}
    assert state.latest_metrics["bob/a-b"]["qber"] == 0.02
    assert state.events == [{"node": "bob", "kind": "key_produced", "t_emu": 2.0, "wall": 3.0,
                             "bits": 64}]
    assert set(state.relay_results) == {"a-b"}

    def child(name: str, role: str):
        return SimpleNamespace(name=name, role=role)

    assert process_counters(state, child("bob", "node")) == {"x": 2}
    assert process_counters(state, child("relay-a-b", "relay")) == {
        "bytes_ab": 1, "bytes_ba": 2, "messages": 3, "dropped": 0, "foreign_datagrams": 5}
    assert process_counters(state, child("daemon", "daemon")) == {
        "connections": 2, "rejected_connections": 0, "bad_frames": 0, "measurements.bob": 7}
    assert process_counters(state, child("broker", "broker")) is None


# -- fuzz: whatever arrives, decode returns a typed payload or None and never raises ------------
_TOPICS = st.sampled_from([
    telemetry.control_start(RUN), telemetry.control_stop(RUN), telemetry.control_link(RUN, "l"),
    telemetry.node_result(RUN, "n"), telemetry.node_metrics(RUN, "n"),
    telemetry.node_events(RUN, "n"), telemetry.relay_result(RUN, "l"),
    telemetry.relay_metrics(RUN, "l"), telemetry.daemon_result(RUN),
    telemetry.daemon_metrics(RUN), f"qnet/{RUN}/n/metrics"]) | st.text(max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=30)
_KNOWN = [type(p) for _, p in SAMPLES]


def _check(decoder: TelemetryDecoder, topic: str, payload: bytes) -> None:
    before = decoder.rejected_total
    got = decoder.decode(topic, payload)
    if got is None:
        assert decoder.rejected_total == before + (1 if payload else 0)
    else:
        assert type(got.payload) in _KNOWN and decoder.rejected_total == before


@settings(max_examples=300, deadline=None)
@given(topic=_TOPICS, payload=st.binary(max_size=200))
def test_fuzz_random_bytes(topic: str, payload: bytes) -> None:
    _check(TelemetryDecoder(RUN), topic, payload)


@settings(max_examples=300, deadline=None)
@given(topic=_TOPICS, value=_JSON, depth=st.integers(0, 3000))
def test_fuzz_random_json_and_nesting(topic: str, value, depth: int) -> None:
    text = json.dumps(value, allow_nan=True)
    _check(TelemetryDecoder(RUN), topic, ("[" * depth + text + "]" * depth).encode())


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, len(SAMPLES) - 1), data=st.data())
def test_fuzz_mutated_valid_payloads(index: int, data) -> None:
    topic, payload = SAMPLES[index]
    wire = bytearray(telemetry.encode(payload))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.integers(0, 255))
    _check(TelemetryDecoder(RUN), topic, bytes(wire))


def test_result_entries_nested_deeper_than_the_limit_are_rejected() -> None:
    def nested(depth: int) -> dict:
        entry: dict = {"leaf": 1}
        for _ in range(depth):
            entry = {"x": [entry]}
        return entry

    decoder = TelemetryDecoder(RUN)
    topic = telemetry.node_result(RUN, "bob")
    ok = NodeResult(node="bob", apps=[nested(telemetry.MAX_DEPTH // 2 - 1)])
    assert decoder.decode(topic, telemetry.encode(ok)) is not None
    deep = NodeResult(node="bob", apps=[nested(400)])  # within msgspec's guard, not ours
    assert decoder.decode(topic, telemetry.encode(deep)) is None
    assert decoder.rejected == {"too_deep": 1}
