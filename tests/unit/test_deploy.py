"""deploy/: the systemd unit passes systemd's own checks, and the example config knows every setting."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from livedm.server.config import SETTINGS, load, parse_duration_s

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# systemd-analyze security's exposure score, 0 (locked down) to 10; "OK" ends at 2.0. Ours must stay there.
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd package")
    return path


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    unit = (DEPLOY / "livedmd.service").read_text()
    livedmd = str(Path(sys.executable).parent / "livedmd")  # the installed one, where the unit's path is not
    local = tmp_path / "livedmd.service"
    local.write_text(unit.replace("/opt/livedm/.venv/bin/livedmd", livedmd))
    done = subprocess.run([systemd_analyze(), "verify", str(local)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", done.stderr


def test_the_unit_is_locked_down() -> None:
    done = subprocess.run([systemd_analyze(), "security", "--offline=true", str(DEPLOY / "livedmd.service")],
                          capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for livedmd.service: ([\d.]+)", done.stdout).group(1))
    assert score <= MAX_EXPOSURE, done.stdout
    unit = (DEPLOY / "livedmd.service").read_text()
    for line in ("Type=notify", "KillMode=mixed", "ProtectSystem=strict", "RestartPreventExitStatus=2",
                 "User=livedm", "Restart=on-failure"):
        assert line in unit.splitlines()
    stop_timeout_s = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    assert stop_timeout_s > parse_duration_s(next(s.default for s in SETTINGS if s.name == "drain_s")) + 30


def test_the_example_config_names_every_setting_and_loads(tmp_path: Path) -> None:
    text = (DEPLOY / "livedm.toml").read_text()
    for setting in SETTINGS:
        assert re.search(rf"^#? ?{setting.name} = ", text, re.M), f"deploy/livedm.toml lacks {setting.name}"
    uncommented = "\n".join(line.split("#")[0] for line in text.splitlines() if line.strip())
    values = tomllib.loads(uncommented)
    config = load({"state_dir": str(tmp_path)}, environ={}, config_file=str(DEPLOY / "livedm.toml"))
    assert config.data_roots == tuple(values["data_roots"]) and config.log_format == "json"
    defaults = load({"state_dir": str(tmp_path)}, environ={})
    for line in text.splitlines():  # a commented "name = value" (not an example) shows the real default
        found = re.match(r"^# (\w+ = [^#]+?)\s*(#.*)?$", line)
        if not found or "example" in (found.group(2) or ""):
            continue
        single = tmp_path / "one.toml"
        single.write_text(found.group(1) + "\n")
        name = found.group(1).split()[0]
        shown = load({"state_dir": str(tmp_path)}, environ={}, config_file=str(single))
        assert getattr(shown, name) == getattr(defaults, name), f"deploy/livedm.toml shows a wrong default: {line}"
