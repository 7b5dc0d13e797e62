"""Building result.json from what the processes reported, checking expectations, printing.

The shape of result.json is a contract (issue 2): top level ``scenario, seed, ok, wall_s,
emulated_s, processes, links, qkd, expectations``. Node entries arrive per node over MQTT;
``merge_qkd`` joins the sender's and receiver's halves of each QKD link by link name.
Predictions come from the same closed-form physics the daemon is tested against.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

from emulator.daemon import photons
from emulator.physics import decoy
from emulator.scenario import BB84App, Expect, Link, Scenario, bb84_link

SENDER_FIELDS = ("key_sha256_a", "secret_bits_a", "daemon_lag_s", "cpu_s_a", "cpu_s_daemon")
DEFAULT_EC_EFFICIENCY = 1.16


def predicted_bb84(link: Link, app: BB84App, ec_efficiency: float | None) -> dict[str, float]:
    """Closed-form gain, QBER, sifted key rate and (with decoys) the GLLP rate of the link."""
    q = link.quantum
    assert q is not None
    source = q.source
    eta = photons.transmittance(link.length_km, q.attenuation_db_per_km) * q.detector.efficiency
    y0 = photons.background_yield(q.detector.dark_count_probability)
    gain = float(photons.gain(source.mu, eta, y0))
    error = float(photons.error_gain(source.mu, eta, y0, q.detector.misalignment))
    signal_share = source.intensity_probabilities[0]
    kept = signal_share * 0.5 * (1 - app.sample_fraction)
    out = {
        "gain": gain,
        "qber": error / gain if gain else float("nan"),
        "sifted_rate_bps": source.rate_hz * gain * kept,
        "plob_bits_per_pulse": float(decoy.plob_bound(eta)),
    }
    if app.postprocessing:
        f = ec_efficiency or DEFAULT_EC_EFFICIENCY
        out["ec_efficiency_used"] = f
        out["gllp_bits_per_pulse"] = float(decoy.gllp_rate(
            source.mu, source.decoys[0], eta, y0, q.detector.misalignment, f=f, q=kept))
    return out


def realtime_factor(entry: dict, source_wall_s: float) -> float | None:
    """Wall seconds of source output per CPU second of the busiest process of the link.

    The daemon, sender and receiver are separate processes, each a pipeline stage; the one
    with the most CPU time bounds the throughput. >= 1 means every stage could keep up with
    the source in real time (the run's own ``completion_factor`` also counts the tail).
    """
    busiest = max((entry.get(k) or 0.0) for k in ("cpu_s_a", "cpu_s_b", "cpu_s_daemon"))
    return source_wall_s / busiest if busiest > 0 else None


def merge_qkd(scenario: Scenario, node_entries: list[dict]) -> list[dict]:
    """Join the sender's and receiver's entries of each QKD link and add predictions."""
    by_link: dict[str, dict] = {}
    for entry in node_entries:
        if "protocol" not in entry:
            continue
        merged = by_link.setdefault(entry["link"], {"auth_rejected": 0})
        merged["auth_rejected"] += entry.get("auth_rejected", 0)
        if entry.get("role") == "sender":
            for name in SENDER_FIELDS:
                merged[name] = entry.get(name)
            merged["sifted_bits_a"] = entry.get("sifted_bits")
            merged.setdefault("pulses", entry.get("pulses"))
        else:
            merged.update({k: v for k, v in entry.items()
                           if k not in ("role", "auth_rejected")})
    apps = {bb84_link(scenario, app).id: app for app in scenario.apps
            if isinstance(app, BB84App)}
    out = []
    for name, entry in by_link.items():
        link = scenario.link(name)
        source_s = (entry.get("pulses") or 0) / link.quantum.source.rate_hz
        entry["sifted_rate_bps"] = entry.get("sifted_bits", 0) / source_s if source_s else 0.0
        if entry.get("processed_slots"):
            entry["pa_bits_per_pulse"] = entry["pa_output_bits"] / entry["processed_slots"]
        entry["predicted"] = predicted_bb84(link, apps[name], entry.get("ec_efficiency"))
        entry["realtime_factor"] = realtime_factor(entry, source_s / scenario.scenario.time_scale)
        out.append(entry)
    return out


ROUTING_FIELDS = ("section", "role", "app")


def join_ends(entries: list[dict], name: str) -> dict:
    """One result entry from the entries an app's nodes returned (a node may be missing).

    The ``role = "report"`` entry (from the end that holds both ends' outcomes) wins; the other
    ends' fields fill in where the report has none. Routing fields are dropped."""
    joined: dict = {}
    ordered = sorted(entries, key=lambda e: e.get("role") != "report")
    for entry in ordered:
        for k, v in entry.items():
            if k not in ROUTING_FIELDS:
                joined.setdefault(k, v)
    joined.setdefault("name", name)
    return joined


def metric_value(result: dict, metric: str) -> Any:
    """Resolve ``qkd.alice-bob.qber``: a list section is indexed by its entries' link/name."""
    parts = metric.split(".")
    value: Any = result
    i = 0
    while i < len(parts):
        key = parts[i]
        if isinstance(value, list):
            value = next((e for e in value if key in (e.get("link"), e.get("name"))), None)
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
        if value is None:
            return None
        i += 1
    return value


def check_expectations(result: dict, expectations: list[Expect]) -> list[dict]:
    checked = []
    for expect in expectations:
        value = metric_value(result, expect.metric)
        number = value if isinstance(value, (int, float)) else None
        checked.append({"metric": expect.metric, "value": number, "ok": expect.holds(number),
                        "condition": expect.describe()})
    return checked


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def print_summary(console: Console, result: dict) -> None:
    for entry in result.get("qkd", []):
        table = Table(title=f"QKD {entry['link']} ({entry['protocol']})")
        table.add_column("metric")
        table.add_column("measured", justify="right")
        table.add_column("predicted", justify="right")
        predicted = entry.get("predicted", {})
        table.add_row("pulses", _fmt(entry.get("pulses"), ",d"), "")
        table.add_row("detections", _fmt(entry.get("detections"), ",d"), "")
        table.add_row("gain (detections/pulse)", _fmt(entry.get("gain")),
                      _fmt(predicted.get("gain")))
        table.add_row("QBER", _fmt(entry.get("qber")), _fmt(predicted.get("qber")))
        table.add_row("sifted key bits", _fmt(entry.get("sifted_bits"), ",d"), "")
        table.add_row("sifted key rate (bit/s)", _fmt(entry.get("sifted_rate_bps"), ",.0f"),
                      _fmt(predicted.get("sifted_rate_bps"), ",.0f"))
        table.add_row("daemon lag behind the clock (s)", _fmt(entry.get("daemon_lag_s"), ".3f"), "")
        if "secret_bits" in entry and entry.get("blocks_ok") is not None:
            table.add_row("blocks ok / failed / aborted",
                          f"{entry['blocks_ok']} / {entry['blocks_failed']} / "
                          f"{entry['blocks_aborted']}", "")
            table.add_row("Cascade efficiency f", _fmt(entry.get("ec_efficiency"), ".3f"), "")
            table.add_row("Y1 lower bound / e1 upper bound",
                          f"{_fmt(entry.get('y1_lower'))} / {_fmt(entry.get('e1_upper'))}", "")
            table.add_row("PA output bits per pulse", _fmt(entry.get("pa_bits_per_pulse")),
                          _fmt(predicted.get("gllp_bits_per_pulse")) + " (GLLP)")
            table.add_row("secret key bits (after auth refill)",
                          _fmt(entry.get("secret_bits"), ",d"), "")
            table.add_row("secret key rate (bit/s)",
                          _fmt(entry.get("secret_key_rate_bps"), ",.0f"), "")
            table.add_row("keys identical at both ends",
                          "yes" if entry.get("key_sha256_a") == entry.get("key_sha256_b")
                          else "NO", "")
            table.add_row("authentication rejects", _fmt(entry.get("auth_rejected"), ",d"), "")
        table.add_row("realtime factor (source s / busiest process CPU s)",
                      _fmt(entry.get("realtime_factor"), ".2f"), "")
        table.add_row("completion factor (source s / time to last key)",
                      _fmt(entry.get("completion_factor"), ".3f"), "")
        console.print(table)
    print_entanglement_summary(console, result)
    if result.get("links"):
        table = Table(title="classical links (through the relays)")
        for column in ("link", "bytes a->b", "bytes b->a", "messages", "dropped"):
            table.add_column(column, justify="right" if column != "link" else "left")
        for link in result["links"]:
            c = link.get("classical") or {}
            table.add_row(link["name"], _fmt(c.get("bytes_ab"), ",d"),
                          _fmt(c.get("bytes_ba"), ",d"), _fmt(c.get("messages"), ",d"),
                          _fmt(c.get("dropped"), ",d"))
        console.print(table)
    if result.get("expectations"):
        table = Table(title="expectations")
        for column in ("metric", "condition", "value", "ok"):
            table.add_column(column)
        for e in result["expectations"]:
            table.add_row(e["metric"], e["condition"], _fmt(e["value"]),
                          "[green]yes[/green]" if e["ok"] else "[red]NO[/red]")
        console.print(table)


# ---------------------------------------------------------------------------------------------
# Entanglement layer (issue 4): ``entanglement`` and ``teleport`` sections


def entanglement_sections(scenario: Scenario, node_entries: list[dict]) -> dict[str, list[dict]]:
    """result.json's ``entanglement`` and ``teleport`` lists from the node entries.

    Each app has one ``role = "report"`` entry (from the end that holds both ends' outcomes);
    the other end's fields are added where the report has none, and repeaters' counters
    (swaps, measurements: routers must show none) are listed under ``repeaters``."""
    sections: dict[str, list[dict]] = {"entanglement": [], "teleport": []}
    merged: dict[tuple[str, str], dict] = {}
    extras: dict[tuple[str, str], list[dict]] = {}
    repeaters: dict[str, list[dict]] = {}
    for entry in node_entries:
        section = entry.get("section")
        if section == "repeater":
            repeaters.setdefault(entry["name"], []).append(
                {k: entry[k] for k in ("node", "swaps", "measurements") if k in entry})
            continue
        if section not in sections:
            continue
        key = (section, entry["name"])
        fields = {k: v for k, v in entry.items() if k not in ("section", "role")}
        if entry.get("role") == "report":
            merged.setdefault(key, {}).update(fields)
        else:
            extras.setdefault(key, []).append(fields)
    for key, fields_list in extras.items():
        target = merged.setdefault(key, {"name": key[1]})
        for fields in fields_list:
            for k, v in fields.items():
                target.setdefault(k, v)
    for (section, name), entry in sorted(merged.items()):
        if entry.get("protocol_kind") == "bbm92":  # every message is authenticated, both ways
            entry["auth_rejected"] = (entry.get("auth_rejected_a") or 0) + (
                entry.get("auth_rejected_b") or 0)
        if section == "entanglement" and name in repeaters:
            entry["repeaters"] = sorted(repeaters[name], key=lambda r: r.get("node", ""))
        sections[section].append(entry)
    return sections


def print_entanglement_summary(console: Console, result: dict) -> None:
    """Tables of the ``entanglement`` and ``teleport`` sections (estimate beside model)."""
    rows = [("pairs", "pairs", ",d"), ("pairs/s (emulated)", "pairs_per_s", ",.0f"),
            ("fidelity (estimated)", "fidelity_mean", ".4f"),
            ("  standard error", "fidelity_std", ".4f"), ("fidelity (model)", "fidelity_model",
                                                          ".4f"),
            ("CHSH S", "chsh", ".3f"), ("QBER", "qber", ".4f"),
            ("secret key bits (delivered)", "secret_bits", ",d"),
            ("  Cascade efficiency f", "ec_efficiency", ".3f"),
            ("  blocks ok / failed / aborted", "blocks", ""),
            ("  authentication rejects", "auth_rejected", ",d"),
            ("  keys equal at both ends", "keys_equal", ""),
            ("swap latency median (ms)", "swap_latency_ms_median", ".2f")]
    for entry in result.get("entanglement", []):
        if entry.get("protocol_kind") == "bbm92":
            entry = {**entry, "keys_equal": str(entry.get("key_sha256_a")
                                                == entry.get("key_sha256_b")),
                     "blocks": f"{entry.get('blocks_ok')} / {entry.get('blocks_failed')} / "
                               f"{entry.get('blocks_aborted')}"}
        table = Table(title=f"entanglement {entry.get('name')} "
                            f"(path {' - '.join(entry.get('path') or [])})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for label, key, spec in rows:
            if entry.get(key) is not None:
                table.add_row(label, _fmt(entry[key], spec))
        console.print(table)
    for entry in result.get("teleport", []):
        table = Table(title=f"teleport {entry.get('name')}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for label, key, spec in [("states", "count", ",d"),
                                 ("fidelity (estimated)", "fidelity_mean", ".4f"),
                                 ("  standard error", "fidelity_std", ".4f"),
                                 ("fidelity (model, random inputs)", "fidelity_model", ".4f"),
                                 ("round trip median (wall ms)", "round_trip_ms_median", ".2f")]:
            if entry.get(key) is not None:
                table.add_row(label, _fmt(entry[key], spec))
        console.print(table)
