"""Trusted relay core: chains of in-memory nodes with shared link-key pools, frames by hand."""

from __future__ import annotations

import os
from collections import deque

import msgspec
import pytest

from nodes.services.relay.core import Deposit, Event, LinkKeyUsed, RelayCore, Send, xor
from nodes.services.relay.messages import (
    BadRelayMessage,
    RelayAuthenticationError,
    RelayForward,
    seal,
)

KEY_BYTES = 32


class Link:
    """The keys both ends of one QKD link hold (same ids, same bytes), with arrival lag."""

    def __init__(self, name: str, count: int) -> None:
        self.keys = {f"{name}/{i}": os.urandom(KEY_BYTES) for i in range(count)}
        self.order = list(self.keys)


class Keys:
    """One node's key manager: per peer, the link keys it has and which ids it used."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self.arrived: dict[str, int] = {}  # peer -> how many of the link's keys arrived here
        self.used: dict[str, set[str]] = {}
        self.marked: set[str] = set()  # claimed before their bits arrived
        self.deposited: dict[tuple[str, str], bytes] = {}

    def add(self, peer: str, link: Link, arrived: int | None = None) -> None:
        self.links[peer] = link
        self.arrived[peer] = len(link.order) if arrived is None else arrived
        self.used[peer] = set()

    def take(self, peer, size_bytes):
        link = self.links[peer]
        for key_id in link.order[: self.arrived[peer]]:
            if key_id not in self.used[peer]:
                self.used[peer].add(key_id)
                return key_id, link.keys[key_id]
        return None

    def claim(self, peer, key_id):
        link = self.links[peer]
        if key_id in self.used[peer] and key_id not in self.marked:
            raise LinkKeyUsed(key_id)
        self.used[peer].add(key_id)
        self.marked.add(key_id)
        if key_id not in link.order[: self.arrived[peer]]:
            return None  # marked: nobody else takes it, its bits come later
        self.marked.discard(key_id)
        return link.keys[key_id]



def chain(n_links: int, keys_per_link: int = 10, names=None, **options):
    names = names or [f"n{i}" for i in range(n_links + 1)]
    stores = {name: Keys() for name in names}
    secrets = {name: {} for name in names}
    for a, b in zip(names, names[1:]):
        link = Link(f"{a}-{b}", keys_per_link)
        stores[a].add(b, link)
        stores[b].add(a, link)
        secrets[a][b] = secrets[b][a] = os.urandom(32)
    cores = {name: RelayCore(name, stores[name], secrets[name], **options) for name in names}
    return names, stores, cores, secrets


def deliver(cores, actions, now=0.0, sender="n0"):
    """Run frames to quiescence (deposits into the node's key store); returns the events."""
    events: list[Event] = []
    queue = deque((sender, a) for a in actions)
    for _ in range(10_000):
        if not queue:
            return events
        source, action = queue.popleft()
        if isinstance(action, Event):
            events.append(action)
            continue
        if isinstance(action, Deposit):
            store = cores[source].keys
            assert (action.peer, action.relay_id) not in store.deposited
            store.deposited[(action.peer, action.relay_id)] = action.key
            continue
        assert isinstance(action, Send)
        queue.extend((action.peer, a) for a in cores[action.peer].receive(source, action.frame,
                                                                          now))
    raise AssertionError("frames did not settle")


def test_six_link_chain_delivers_same_key_to_both_ends_and_spends_one_for_one():
    names, stores, cores, _ = chain(6)
    keys = {}
    for i in range(5):
        key = os.urandom(KEY_BYTES)
        keys[f"r{i}"] = key
        events = deliver(cores, cores["n0"].originate(f"r{i}", i, key, names, 0.0))
        kinds = [e.kind for e in events]
        assert kinds.count("relay_step") == 6  # one per link
        assert kinds.count("relay_key_stored") == 1 and kinds.count("relay_key_delivered") == 1
    for relay_id, key in keys.items():
        assert stores["n0"].deposited[("n6", relay_id)] == key
        assert stores["n6"].deposited[("n0", relay_id)] == key
    for a, b in zip(names, names[1:]):  # both ends of every link spent exactly 5 keys' bits
        assert cores[a].stats.consumed_bits[b] == 5 * 8 * KEY_BYTES
        assert cores[b].stats.consumed_bits[a] == 5 * 8 * KEY_BYTES
        assert stores[a].used[b] == stores[b].used[a]  # the same link keys at both ends
    for relay in names[1:-1]:
        assert cores[relay].stats.as_dict()["bits_consumed"] == 2 * 5 * 8 * KEY_BYTES
        assert cores[relay].stats.counts["forwarded"] == 5
    assert not any(stores[r].deposited for r in names[1:-1])  # relays store nothing
    assert cores["n0"].pending == 0


def test_ciphertext_on_each_link_is_the_key_padded_with_that_links_key():
    names, stores, cores, secrets = chain(2)
    key = os.urandom(KEY_BYTES)
    actions = cores["n0"].originate("r", 0, key, names, 0.0)
    send = next(a for a in actions if isinstance(a, Send))
    forward = msgspec.msgpack.decode(send.frame, type=RelayForward)
    link_key = stores["n0"].links["n1"].keys[forward.link_key_id]
    assert forward.ciphertext == xor(key, link_key) != key


def test_origin_without_link_key_waits_then_gives_up_having_spent_nothing():
    names, stores, cores, _ = chain(2, keys_per_link=0, hold_timeout_s=1.0)
    assert cores["n0"].originate("r", 0, os.urandom(KEY_BYTES), names, 0.0) == []
    assert cores["n0"].retry(0.5) == [] and cores["n0"].pending == 1
    events = cores["n0"].retry(1.0)
    assert [e.fields["reason"] for e in events] == ["no_next_link_key"]
    assert not cores["n0"].stats.consumed_bits and cores["n0"].pending == 0


def test_origin_takes_its_link_key_once_it_arrives():
    names, stores, cores, _ = chain(1, hold_timeout_s=1.0)
    stores["n0"].arrived["n1"] = 0
    assert cores["n0"].originate("r", 0, os.urandom(KEY_BYTES), names, 0.0) == []
    stores["n0"].arrived["n1"] = 10
    events = deliver(cores, cores["n0"].retry(0.5))
    assert [e.kind for e in events] == ["relay_step", "relay_key_stored", "relay_key_delivered"]


@pytest.mark.parametrize("names", [
    ["g", "f", "e", "d", "c", "b", "a"],  # every sender asks its receiver for the pad
    ["a", "x", "b", "y", "c", "z", "d"],  # every other one does
])
def test_senders_that_are_not_the_links_allocator_pad_with_the_key_it_picks(names):
    _, stores, cores, _ = chain(6, names=names)
    keys = {f"r{i}": os.urandom(KEY_BYTES) for i in range(4)}
    for relay_id, key in keys.items():
        events = deliver(cores, cores[names[0]].originate(relay_id, 0, key, names, 0.0),
                         sender=names[0])
        assert [e.kind for e in events].count("relay_step") == 6
        assert events[-1].kind == "relay_key_delivered"
    for relay_id, key in keys.items():
        assert stores[names[0]].deposited[(names[-1], relay_id)] == key
        assert stores[names[-1]].deposited[(names[0], relay_id)] == key
    for a, b in zip(names, names[1:]):
        assert cores[a].stats.consumed_bits[b] == cores[b].stats.consumed_bits[a] == \
            4 * 8 * KEY_BYTES
        assert stores[a].used[b] == stores[b].used[a]


def test_allocator_without_a_key_to_grant_fails_the_relay_after_the_hold_time():
    names = ["b", "a"]
    _, stores, cores, _ = chain(1, names=names, hold_timeout_s=1.0)
    stores["a"].arrived["b"] = 0
    assert deliver(cores, cores["b"].originate("r", 0, os.urandom(KEY_BYTES), names, 0.0),
                   sender="b") == []
    assert cores["a"].waiting == 1
    events = deliver(cores, cores["a"].retry(1.0), sender="a")
    assert [e.kind for e in events] == ["relay_failed", "relay_failed"]
    assert events[-1].fields["reason"] == "no_next_link_key" and cores["b"].pending == 0


def test_forward_waits_for_its_link_key_to_arrive_then_continues():
    names, stores, cores, _ = chain(2, claim_timeout_s=1.0)
    stores["n1"].arrived["n0"] = 0  # n1 has not stored the link's first block yet
    sends = cores["n0"].originate("r", 0, os.urandom(KEY_BYTES), names, 0.0)
    assert deliver(cores, sends) == [sends[0]]  # only n0's relay_step: n1 waits
    assert cores["n1"].next_deadline() == pytest.approx(1.0)
    stores["n1"].arrived["n0"] = 10
    events = deliver(cores, cores["n1"].retry(0.5), sender="n1")
    assert [e.kind for e in events] == ["relay_step", "relay_key_stored", "relay_key_delivered"]


def test_missing_link_key_times_out_into_a_failed_ack_at_the_origin():
    names, stores, cores, _ = chain(3, claim_timeout_s=1.0)
    stores["n2"].arrived["n1"] = 0
    deliver(cores, cores["n0"].originate("r", 0, os.urandom(KEY_BYTES), names, 0.0))
    assert deliver(cores, cores["n2"].retry(0.5), sender="n2") == []
    events = deliver(cores, cores["n2"].retry(1.0), sender="n2")
    assert [e.kind for e in events] == ["relay_failed", "relay_failed"]  # at n2, at the origin
    assert events[-1].fields["reason"] == "link_key_missing"
    assert cores["n0"].pending == 0 and not stores["n0"].deposited and not stores["n3"].deposited
    assert cores["n0"].stats.failures["link_key_missing"] == 1


def test_relay_without_next_link_key_holds_then_fails():
    names, stores, cores, _ = chain(2, hold_timeout_s=2.0)
    stores["n1"].arrived["n2"] = stores["n2"].arrived["n1"] = 0
    deliver(cores, cores["n0"].originate("r", 0, os.urandom(KEY_BYTES), names, 0.0))
    assert cores["n1"].stats.consumed_bits["n0"] == 8 * KEY_BYTES  # spent the incoming pad
    events = deliver(cores, cores["n1"].retry(2.0), sender="n1")
    assert events[-1].fields["reason"] == "no_next_link_key"
    assert cores["n1"].stats.consumed_bits["n2"] == 0


def test_link_key_used_at_the_receiver_fails_the_relay():
    names, stores, cores, _ = chain(1)
    stores["n1"].used["n0"].add("n0-n1/0")  # n1 already spent the key n0 will pick
    events = deliver(cores, cores["n0"].originate("r", 0, os.urandom(KEY_BYTES), names, 0.0))
    assert events[-1].kind == "relay_failed" and events[-1].fields["reason"] == "link_key_used"


def test_origin_times_out_a_relay_that_never_answers_and_counts_a_late_ack():
    names, stores, cores, _ = chain(1, origin_timeout_s=3.0)
    actions = cores["n0"].originate("r", 0, os.urandom(KEY_BYTES), names, 0.0)
    assert cores["n0"].next_deadline() == pytest.approx(3.0)
    assert [e.fields["reason"] for e in cores["n0"].retry(3.0)] == ["origin_timeout"]
    deliver(cores, actions)  # the ack arrives after all
    assert cores["n0"].stats.counts["late_acks"] == 1 and not stores["n0"].deposited


def test_bad_frames_are_remote_errors_and_change_nothing():
    names, stores, cores, secrets = chain(2)
    forward = RelayForward("r", 0, names, 1, "n0-n1/0", b"\x00" * KEY_BYTES)
    with pytest.raises(RelayAuthenticationError):
        cores["n1"].receive("n0", seal(os.urandom(32), forward), 0.0)
    with pytest.raises(BadRelayMessage):
        cores["n1"].receive("n0", b"\x93garbage", 0.0)
    with pytest.raises(BadRelayMessage):  # a neighbour claiming another hop of the path
        cores["n1"].receive("n2", seal(secrets["n1"]["n2"], forward), 0.0)
    with pytest.raises(BadRelayMessage):  # not a neighbour at all
        cores["n1"].receive("n9", seal(secrets["n1"]["n2"], forward), 0.0)
    with pytest.raises(BadRelayMessage):  # a forward with a link key the allocator did not pick
        cores["n0"].receive("n1", seal(secrets["n1"]["n0"],
                                       RelayForward("r", 0, ["n1", "n0"], 1, "x", b"k")), 0.0)
    assert not stores["n1"].used["n0"] and cores["n1"].stats.failures["relay_bad_mac"] == 1


def test_waiting_forwards_are_bounded():
    names, stores, cores, secrets = chain(1, max_waiting=2)
    stores["n1"].arrived["n0"] = 0
    replies = []
    for i in range(3):
        forward = RelayForward(f"r{i}", i, names, 1, f"n0-n1/{i}", b"\x01" * KEY_BYTES)
        replies.append(cores["n1"].receive("n0", seal(secrets["n0"]["n1"], forward), 0.0))
    assert replies[:2] == [[], []]
    assert replies[2][0].fields["reason"] == "relay_busy"


def test_originate_rejects_a_path_not_starting_here():
    names, _, cores, _ = chain(2)
    with pytest.raises(ValueError):
        cores["n1"].originate("r", 0, b"k" * KEY_BYTES, names, 0.0)


def test_done_travels_down_the_path_and_marks_every_node():
    names, _, cores, _ = chain(3)
    deliver(cores, cores["n0"].originate("r", 1, os.urandom(KEY_BYTES), names, 0.0))
    assert cores["n0"].pending == 0
    deliver(cores, cores["n0"].finish(names))
    assert all(core.done for core in cores.values())
