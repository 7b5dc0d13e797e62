"""``qnet sweep``: run one scenario per value of a parameter; write a CSV and a key-rate plot.

Each value is applied with the same dotted-path override as ``--set`` and validated like the
file, then run by the orchestrator as a normal run (its own run folder under ``OUT/runs``).
The plot shows the measured secret bits per pulse of every QKD link against the parameter,
with the GLLP curve (vacuum + weak decoy, measured f) and the PLOB bound -log2(1 - eta) for
the same scenario evaluated on a fine grid of the parameter.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trio
from rich.console import Console

from emulator.apps import kinds
from emulator.orchestrator import RunOptions, run
from emulator.scenario import Scenario, load_scenario

QKD_KIND = "qkd.bb84"  # the kind whose predictions (extra["predict"]) the plot draws

COLUMNS = ("value", "exit_code", "pulses", "gain", "qber", "sifted_bits", "secret_bits",
           "secret_bits_per_pulse", "pa_bits_per_pulse", "secret_key_rate_bps", "ec_efficiency",
           "y1_lower", "e1_upper", "blocks_ok", "gllp_bits_per_pulse", "plob_bits_per_pulse",
           "realtime_factor")


@dataclass
class SweepPoint:
    value: float
    exit_code: int
    qkd: dict


def run_point(path: Path, overrides: list[str], param: str, value: float, out: Path,
              broker: str, console: Console) -> SweepPoint:
    scenario = load_scenario(path, [*overrides, f"{param}={value!r}"])
    options = RunOptions(broker=broker, run_dir=out / "runs" / f"{param}={value:g}",
                         progress=False)
    code, result = trio.run(run, scenario, options, console)
    if result is None:  # interrupted: every process was stopped; qnet exits 130
        raise KeyboardInterrupt
    (options.run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    qkd = result["qkd"][0] if result["qkd"] else {}
    return SweepPoint(value, code, qkd)


def theory_curve(path: Path, overrides: list[str], param: str, values: np.ndarray,
                 ec_efficiency: float) -> tuple[np.ndarray, np.ndarray]:
    """GLLP and PLOB bits per pulse of the first QKD link, evaluated at each value."""
    gllp, plob = [], []
    for value in values:
        scenario: Scenario = load_scenario(path, [*overrides, f"{param}={float(value)!r}"])
        kind = kinds()[QKD_KIND]
        app = next(a for a in scenario.apps if isinstance(a, kind.spec))
        predicted = kind.extra["predict"](scenario, app, ec_efficiency)
        gllp.append(predicted.get("gllp_bits_per_pulse", np.nan))
        plob.append(predicted["plob_bits_per_pulse"])
    return np.array(gllp), np.array(plob)


def write_csv(points: list[SweepPoint], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for point in points:
            q = point.qkd
            predicted = q.get("predicted", {})
            row = {"value": point.value, "exit_code": point.exit_code, **q,
                   "gllp_bits_per_pulse": predicted.get("gllp_bits_per_pulse"),
                   "plob_bits_per_pulse": predicted.get("plob_bits_per_pulse")}
            writer.writerow([row.get(c) for c in COLUMNS])


def plot(points: list[SweepPoint], grid: np.ndarray, gllp: np.ndarray, plob: np.ndarray,
         param: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.semilogy(grid, plob, "k--", label="PLOB bound $-\\log_2(1-\\eta)$")
    ax.semilogy(grid, np.where(gllp > 0, gllp, np.nan), "C0-",
                label="GLLP, vacuum + weak decoy (measured f)")
    measured = [(p.value, p.qkd.get("pa_bits_per_pulse")) for p in points]
    xs = [x for x, y in measured if y]
    ys = [y for x, y in measured if y]
    ax.semilogy(xs, ys, "C1o", markersize=7, label="measured (qnet run)")
    zero = [x for x, y in measured if not y]
    if zero:
        ax.plot(zero, [np.nanmin(plob[plob > 0]) * 1e-4] * len(zero), "C3x",
                label="measured: no key")
    ax.set_xlabel(param)
    ax.set_ylabel("secret bits per pulse (PA output)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep(path: Path, param: str, values: list[float], out: Path, overrides: list[str],
          broker: str, console: Console) -> list[SweepPoint]:
    out.mkdir(parents=True, exist_ok=True)
    points = []
    for value in values:
        console.print(f"[bold]{param} = {value:g}[/bold]")
        points.append(run_point(path, overrides, param, value, out, broker, console))
    write_csv(points, out / "sweep.csv")
    efficiencies = [p.qkd["ec_efficiency"] for p in points if p.qkd.get("ec_efficiency")]
    f = float(np.mean(efficiencies)) if efficiencies else kinds()[QKD_KIND].extra["default_ec_efficiency"]
    grid = np.linspace(min(values), max(values), 60)
    gllp, plob = theory_curve(path, overrides, param, grid, f)
    name = load_scenario(path, overrides).scenario.name
    plot(points, grid, gllp, plob, param, f"{name}: secret key rate vs {param}",
         out / "sweep.png")
    return points
