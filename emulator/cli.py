"""The ``qnet`` command: run, validate and list scenarios.

Exit codes of ``qnet run``: 0 every expectation holds, 1 an expectation failed, 2 invalid
input (nothing was started), 3 runtime failure (the failed process's log tail is printed;
result.json still holds what the others reported) or results that cannot be written, 130
interrupted. Messages are printed verbatim (no rich markup inside them).
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

from emulator.interrupt import exit_130_on_sigint
from emulator.scenario import ScenarioError, load_scenario, read_raw

EXIT_OK, EXIT_EXPECTATION, EXIT_INVALID, EXIT_RUNTIME, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "scenarios"

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="qnet: hybrid classical-quantum network emulator")
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _error(label: str, message: str) -> None:
    """``label: message`` on stderr, the message verbatim (``[nu, 0.0]`` stays as it is)."""
    err.print(f"[red]{label}:[/red] ", end="", highlight=False)
    err.print(message, markup=False, highlight=False)


def _invalid(message: str) -> None:
    _error("invalid scenario", message)
    raise typer.Exit(EXIT_INVALID)


def _write_results(result: dict, scenario: Path, json_out: Path | None) -> Path:
    """result.json and scenario.toml into the run folder, then ``--json``; OSError naming the
    file on failure (what was written before it stays)."""
    run_path = Path(result["run_dir"])
    text = json.dumps(result, indent=2, default=str)
    steps = [(run_path / "result.json", lambda path: path.write_text(text)),
             (run_path / "scenario.toml", lambda path: shutil.copyfile(scenario, path))]
    if json_out is not None:
        steps.append((json_out, lambda path: path.write_text(text)))
    for path, write in steps:
        try:
            write(path)
        except OSError as exc:
            raise OSError(f"{path}: {exc.strerror or exc}") from None
    return run_path


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
    netns: Annotated[bool, typer.Option("--netns", help="each node in its own network "
                                        "namespace, links as shaped Ethernet wires (root; "
                                        "docs/netns.md)")] = False,
    capture: Annotated[bool, typer.Option("--capture", help="each relay writes its link's "
                                          "classical traffic to capture-<link>.pcapng in "
                                          "the run folder")] = False,
    capture_max_mb: Annotated[float, typer.Option("--capture-max-mb", help="largest "
                                                  "capture file (MB)")] = 100.0,
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
    if netns:
        from emulator.netns.plan import PlanError, make_plan
        from emulator.netns.setup import why_not_available

        if (missing := why_not_available()) is not None:
            _error("cannot run", missing)
            raise typer.Exit(EXIT_INVALID)
        try:
            make_plan(sc)
        except (PlanError, ValueError) as exc:
            _invalid(str(exc))
    if capture and not capture_max_mb > 0:
        _error("invalid option", f"--capture-max-mb: must be > 0, got {capture_max_mb:g}")
        raise typer.Exit(EXIT_INVALID)
    options = RunOptions(broker=broker, run_dir=run_dir, progress=progress, netns=netns,
                         capture_max_bytes=round(capture_max_mb * 1e6) if capture else None)
    try:
        code, result = trio.run(run_scenario, sc, options, console)
    except (ChildFailed, RunFailed, OSError, brokers.BrokerError) as exc:
        _error("run failed", str(exc))
        raise typer.Exit(EXIT_RUNTIME)
    if code == EXIT_INTERRUPTED:
        err.print("interrupted: every process has been stopped")
        raise typer.Exit(EXIT_INTERRUPTED)
    assert result is not None
    try:
        run_path = _write_results(result, scenario, json_out)
    except OSError as exc:
        _error("cannot write the results", str(exc))
        raise typer.Exit(EXIT_RUNTIME)
    failure = result.get("failure")
    if failure is not None:
        _error("run failed", failure["reason"])
        if "log_tail" in failure:
            err.print(f"--- last lines of {result['run_dir']}/{failure['process']}.log ---",
                      markup=False, highlight=False)
            err.print(failure["log_tail"], markup=False, highlight=False)
        err.print(f"what the other processes reported is in {run_path}/result.json",
                  markup=False, highlight=False)
        raise typer.Exit(EXIT_RUNTIME)
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
        _error("sweep failed", str(exc))
        raise typer.Exit(EXIT_RUNTIME)
    except KeyboardInterrupt:  # a point's run was interrupted (click would say "Aborted!", 1)
        err.print("interrupted: every process has been stopped")
        raise typer.Exit(EXIT_INTERRUPTED)
    for point in points:
        q = point.qkd
        console.print(f"{param} = {point.value:g}: secret bits/pulse "
                      f"{q.get('pa_bits_per_pulse') or 0:.3e} (GLLP "
                      f"{q.get('predicted', {}).get('gllp_bits_per_pulse', 0):.3e}), "
                      f"{q.get('secret_key_rate_bps', 0):,.0f} bit/s, exit {point.exit_code}")
    console.print(f"wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")


@app.command()
def fault(
    run_dir: Annotated[Path, typer.Argument(help="folder of a running run")],
    action: Annotated[str, typer.Argument(help="cut | restore | degrade | corrupt | crash")],
    target: Annotated[str, typer.Argument(help="a link (a crash: a node)")],
    plane: Annotated[str, typer.Option(help="classical | quantum | both")] = "both",
    db: Annotated[float, typer.Option(help="degrade: extra quantum attenuation (dB)")] = 0.0,
    loss: Annotated[float, typer.Option(help="degrade: extra datagram loss (0..1)")] = 0.0,
    for_s: Annotated[float | None, typer.Option("--for", help="undo a cut or degrade after "
                                                "this many emulated s")] = None,
    restart_after: Annotated[float | None, typer.Option(
        "--restart-after", help="crash: restart the node after this many emulated s")] = None,
) -> None:
    """Apply a fault to a running run now (its orchestrator checks, applies and records it).

    Exit 0 applied, 2 invalid (the reason is printed), 1 the run is not running or did not
    answer."""
    from emulator.fault_cli import FaultRefused, RunUnreachable, send_fault

    try:
        send_fault(run_dir, action, target, plane=plane, db=db, loss=loss, for_s=for_s,
                   restart_after_s=restart_after)
    except FaultRefused as exc:
        _error("invalid fault", str(exc))
        raise typer.Exit(EXIT_INVALID)
    except RunUnreachable as exc:
        _error("run not reachable", str(exc))
        raise typer.Exit(EXIT_EXPECTATION)
    console.print(f"{action} {target} applied", highlight=False)


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
    exit_130_on_sigint()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
