"""The ``qnet`` command: run, validate and list scenarios.

Exit codes of ``qnet run``: 0 every expectation holds, 1 an expectation failed, 2 invalid
input (nothing was started), 3 runtime failure (the failed process's log tail is printed),
130 interrupted.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated

import trio
import typer
from rich.console import Console

from emulator.scenario import ScenarioError, load_scenario, read_raw

EXIT_OK, EXIT_EXPECTATION, EXIT_INVALID, EXIT_RUNTIME, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "scenarios"

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="qnet: hybrid classical-quantum network emulator")
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _invalid(message: str) -> None:
    err.print(f"[red]invalid scenario:[/red] {message}", highlight=False)
    raise typer.Exit(EXIT_INVALID)


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="scenario TOML file")],
    json_out: Annotated[Path | None, typer.Option("--json", help="also write result.json here")] = None,
    seed: Annotated[int | None, typer.Option(help="override scenario.seed")] = None,
    duration: Annotated[float | None, typer.Option(help="override scenario.duration_s")] = None,
    time_scale: Annotated[float | None, typer.Option("--time-scale", help="override scenario.time_scale")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="PATH=VALUE override, e.g. links.0.length_km=50")] = [],
    broker: Annotated[str, typer.Option(help="embedded | mosquitto | mqtt://host:port")] = "embedded",
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="folder for logs and results")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Run a scenario: start every process, supervise, collect results, tear down."""
    from emulator import broker as brokers
    from emulator.orchestrator import RunFailed, RunOptions
    from emulator.orchestrator import run as run_scenario
    from emulator.results import print_summary
    from emulator.supervise import ChildFailed

    overrides = list(set_)
    for name, value in (("seed", seed), ("duration_s", duration), ("time_scale", time_scale)):
        if value is not None:
            overrides.append(f"scenario.{name}={value}")
    try:
        sc = load_scenario(scenario, overrides)
        brokers.parse_broker(broker)
    except ScenarioError as exc:
        _invalid(str(exc))
    except ValueError as exc:
        _invalid(f"--broker: {exc}")
    options = RunOptions(broker=broker, run_dir=run_dir, progress=progress)
    try:
        code, result = trio.run(run_scenario, sc, options, console)
    except (ChildFailed, RunFailed) as exc:
        err.print(f"[red]run failed:[/red] {exc}", highlight=False)
        child = getattr(exc, "child", None)
        if child is not None:
            err.print(f"--- last lines of {child.log_path} ---", highlight=False)
            err.print(child.log_tail(), highlight=False, markup=False)
        raise typer.Exit(EXIT_RUNTIME)
    except (OSError, brokers.BrokerError) as exc:
        err.print(f"[red]run failed:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_RUNTIME)
    if code == EXIT_INTERRUPTED:
        err.print("interrupted: every process has been stopped")
        raise typer.Exit(EXIT_INTERRUPTED)
    assert result is not None
    run_path = Path(result["run_dir"])
    shutil.copyfile(scenario, run_path / "scenario.toml")
    text = json.dumps(result, indent=2, default=str)
    (run_path / "result.json").write_text(text)
    if json_out is not None:
        json_out.write_text(text)
    print_summary(console, result)
    verdict = "[green]all expectations hold[/green]" if result["ok"] else \
        "[red]an expectation failed[/red]"
    console.print(f"{verdict}; wall {result['wall_s']:.1f} s; results in {run_path}/result.json")
    raise typer.Exit(code)


@app.command()
def validate(scenario: Annotated[Path, typer.Argument(help="scenario TOML file")],
             set_: Annotated[list[str], typer.Option("--set")] = []) -> None:
    """Check a scenario file without running it (exit 2 with the field path if invalid)."""
    try:
        sc = load_scenario(scenario, set_)
    except ScenarioError as exc:
        _invalid(str(exc))
    console.print(f"{scenario}: valid ({len(sc.nodes)} nodes, {len(sc.links)} links, "
                  f"{len(sc.apps)} apps)")


@app.command()
def sweep(
    scenario: Annotated[Path, typer.Argument(help="scenario TOML file")],
    param: Annotated[str, typer.Option(help="dotted path to vary, e.g. links.0.length_km")],
    values: Annotated[str, typer.Option(help="comma-separated values, e.g. 0,25,50,75,100")],
    out: Annotated[Path, typer.Option(help="folder for sweep.csv, sweep.png and the runs")],
    duration: Annotated[float | None, typer.Option(help="override scenario.duration_s")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="PATH=VALUE override")] = [],
    broker: Annotated[str, typer.Option(help="embedded | mosquitto | mqtt://host:port")] = "embedded",
) -> None:
    """Run the scenario once per value; write a CSV and a key-rate plot with GLLP and PLOB."""
    from emulator import broker as brokers
    from emulator.orchestrator import RunFailed
    from emulator.supervise import ChildFailed
    from emulator.sweep import sweep as run_sweep

    overrides = list(set_) + ([f"scenario.duration_s={duration}"] if duration else [])
    try:
        numbers = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        _invalid(f"--values: expected comma-separated numbers, got {values!r}")
    if not numbers:
        _invalid("--values: no values given")
    try:
        brokers.parse_broker(broker)
        for value in numbers:
            load_scenario(scenario, [*overrides, f"{param}={value!r}"])
    except ScenarioError as exc:
        _invalid(str(exc))
    except ValueError as exc:
        _invalid(f"--broker: {exc}")
    try:
        points = run_sweep(scenario, param, numbers, out, overrides, broker, console)
    except (ChildFailed, RunFailed, brokers.BrokerError, OSError) as exc:
        err.print(f"[red]sweep failed:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_RUNTIME)
    for point in points:
        q = point.qkd
        console.print(f"{param} = {point.value:g}: secret bits/pulse "
                      f"{q.get('pa_bits_per_pulse') or 0:.3e} (GLLP "
                      f"{q.get('predicted', {}).get('gllp_bits_per_pulse', 0):.3e}), "
                      f"{q.get('secret_key_rate_bps', 0):,.0f} bit/s, exit {point.exit_code}")
    console.print(f"wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")


@app.command("list")
def list_scenarios() -> None:
    """List the shipped scenarios with their descriptions."""
    for path in sorted(SCENARIOS_DIR.glob("*.toml")):
        try:
            meta = read_raw(path).get("scenario", {})
        except ScenarioError:
            continue
        console.print(f"[bold]{path.relative_to(SCENARIOS_DIR.parent)}[/bold]  "
                      f"{meta.get('description', '')}", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
