"""A program's result entry (``emulator.programs.program_result``): the last JSON-object line
of its log, whatever stderr printed around it; None without one."""

from __future__ import annotations

from pathlib import Path

from emulator.programs import program_result


def test_last_json_object_line_wins(tmp_path: Path) -> None:
    log = tmp_path / "alice.rotate.log"
    log.write_text('{"first": 1}\nDEBUG: (wq-alice) handshake\n{"keys": [{"epoch": 0}]}\n'
                   '{"broken": \n23:00:01 epoch 3: installed PSK\n')
    assert program_result(log) == {"keys": [{"epoch": 0}]}


def test_no_result_without_a_json_line(tmp_path: Path) -> None:
    log = tmp_path / "bob.iperf3.log"
    log.write_text("Connecting to host 10.255.0.2, port 5201\n[  5] 0.00-3.00 sec\n")
    assert program_result(log) is None
    assert program_result(tmp_path / "absent.log") is None
