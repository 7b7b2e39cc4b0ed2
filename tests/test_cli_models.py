"""`resnet5m presets` and `resnet5m summary` from the command line."""

from __future__ import annotations

import subprocess
import sys

from resnet5m.cli.main import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnet5m.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_presets_table(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, count in [("reddy2024", "2,777,674"), ("mehta2023", "4,935,242"), ("resnet18", "11,173,962")]:
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert count in line
    assert "NO" in next(ln for ln in out.splitlines() if ln.startswith("resnet18"))


def test_summary_of_preset_and_flags(capsys):
    assert main(["summary", "reddy2024"]) == 0
    out = capsys.readouterr().out
    assert "trainable params:     2,777,674 (within budget" in out and "mult-adds per image" in out
    assert main(["summary", "--blocks", "3,3,2,3", "--channels", "64,128,128,256", "--pool", "4"]) == 0
    assert "4,935,242" in capsys.readouterr().out
    assert main(["summary", "strong", "--depth", "1"]) == 0  # a recipe's name: the model it trains
    out = capsys.readouterr().out
    assert "trainable params:     4,944,056" in out and "Units." not in out and "Total mult-adds (M)" in out


def test_summary_over_budget_exits_nonzero(capsys):
    assert main(["summary", "resnet18"]) == 1
    assert "over budget: 11,173,962 > 5,000,000" in capsys.readouterr().out
    assert main(["summary", "resnet18", "--allow-over-budget"]) == 0


def test_expected_errors_are_one_line_without_traceback():
    r = run_cli("summary", "nope")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "unknown model preset 'nope'" in r.stderr
    r = run_cli("summary", "--blocks", "3,3", "--channels", "64,128,128")
    assert r.returncode == 2 and "channels has 3 entries but blocks has 2 stages" in r.stderr
    r = run_cli("summary", "--blocks", "3,x")
    assert r.returncode == 2 and "expected comma-separated integers" in r.stderr
