"""What a run leaves behind: its folder (fresh, or a reused one cleared of the previous
run's files), the failure record of a run that ended early, and result.json's content.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from emulator.coexistence import raman_section
from emulator.collect import process_counters
from emulator.faults import faults_section
from emulator.hybrid_config import daemon_counts, note_unmodelled_faults
from emulator.programs import programs_section
from emulator.results import app_sections, check_expectations
from emulator.routing_report import routing_section

if TYPE_CHECKING:
    from emulator.orchestrator import RunState

# What a run writes into its folder; a reused folder is cleared of these (and nothing else).
RUN_FILES = ("*.ready.json", "*.ready.json.tmp", "*.config.json", "*.config.json.tmp",
             "*.log", "result.json", "scenario.toml")


def make_run_dir(base: Path | None, name: str) -> Path:
    """The run's folder (0700 when created here); a reused one loses the previous run's files."""
    if base is not None:
        if not base.exists():
            base.mkdir(parents=True, mode=0o700)
        for pattern in RUN_FILES:
            for stale in base.glob(pattern):
                stale.unlink(missing_ok=True)
        return base
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{stamp}-{name}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{stamp}-{name}-{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700)
    return path


def failure_info(error: BaseException) -> dict:
    """result.json's ``failure``: which process, its exit code and log tail, and why."""
    child = getattr(error, "child", None)
    info: dict = {"reason": str(error)}
    if child is not None:
        info.update(process=child.name, role=child.role, exit_code=child.exit_code,
                    log_tail=child.log_tail())
    return info


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first non-group exception inside ``group`` (what the user needs to read)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def assemble(state: RunState, wall_s: float, emulated_s: float) -> dict:
    """result.json's content; after a failure ``ok`` is false, ``failure`` says what died,
    and ``nodes`` keeps every node's report as received (partial entries included)."""
    scenario = state.scenario
    entries = [e for r in state.node_results.values() for e in r.get("apps", [])]
    if state.failure is not None:
        try:
            sections = app_sections(scenario, entries)
        except Exception as exc:  # partial entries may not merge; the raw ones are kept
            sections = {"merge_error": f"{type(exc).__name__}: {exc}"}
    else:
        sections = app_sections(scenario, entries)
    daemon_counts(sections, state.daemon_reports.get("result"))  # hybrid router_measurements
    note_unmodelled_faults(sections, state.fault_log)  # hybrid models: scheduled cuts only
    links = []
    for link in scenario.links:
        counters = state.relay_results.get(link.id, {})
        links.append({
            "name": link.id, "a": link.a, "b": link.b, "length_km": link.length_km,
            "classical": {k: counters.get(k) for k in ("bytes_ab", "bytes_ba", "messages",
                                                       "dropped")},
        })
        quantum = state.daemon_reports.get("result", {}).get("link_state", {}).get(link.id)
        if quantum is not None:  # faults and Raman noise the daemon applied (daemon.traffic)
            links[-1]["quantum_state"] = quantum
        coexistence = raman_section(link, counters, quantum, emulated_s)
        if coexistence is not None:
            links[-1]["raman"] = coexistence
    result = {
        "scenario": scenario.scenario.name,
        "seed": scenario.scenario.seed,
        "ok": True,
        "wall_s": wall_s,
        "emulated_s": emulated_s,
        "time_scale": scenario.scenario.time_scale,
        "run_dir": str(state.run_dir),
        "processes": [{"name": c.name, "role": c.role, "pid": c.pid, "exit_code": c.exit_code,
                       "counters": process_counters(state, c)} for c in state.children],
        "telemetry_rejected": sum(state.telemetry_rejected.values()),
        "links": links,
        "programs": programs_section(state.children),
        **sections,
        **kms_section(state.node_results),
        **routing_section(scenario, state.events),
        "events": state.events,
    }
    if state.fault_log:
        result["faults"] = faults_section(state.fault_log, state.events)
    if state.failure is not None:
        result.update(ok=False, failure=state.failure, nodes=state.node_results,
                      expectations=[])
        return result
    result["expectations"] = check_expectations(result, scenario.expect)
    result["ok"] = all(e["ok"] for e in result["expectations"])
    return result


def kms_section(node_results: dict[str, dict]) -> dict:
    """``kms``: each node's key service report (nodes/services/kme), when the run had one."""
    reports = [r["services"]["kms"] for r in node_results.values()
               if r.get("services", {}).get("kms")]
    return {"kms": reports} if reports else {}
