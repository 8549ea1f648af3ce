"""Hook run logs: read back in pieces of whole characters (the tail, or the whole from offsets), refused
through a link, and removed when old."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from livedm.server.config import Config
from livedm.server.errors import ApiError
from livedm.server.hook_logs import Pruner, override_name, prune, read_piece, run_log_name
from tests.support.config import make_config

TEXT = "=== J7 attempt 1\n" + "".join(f"line {n}: µ-grid ✓ 🧊\n" for n in range(500))  # 1-4 byte characters


@pytest.fixture
def logs(tmp_path: Path) -> Config:
    config = make_config(tmp_path / "state")
    config.hook_logs.mkdir(parents=True)
    (config.hook_logs / "P1_S1_raw_J7.log").write_bytes(TEXT.encode())
    return config


def test_run_logs_are_named_by_their_job() -> None:
    assert run_log_name("krios-P12", "S3", "micrographs", "J45") == "krios-P12_S3_micrographs_J45.log"


def test_the_whole_log_comes_back_from_pieces_of_any_size(logs: Config) -> None:
    size = len(TEXT.encode())
    for limit in (1, 2, 3, 4, 5, 7, 64, 1000, size, 1 << 20):
        offset, parts = 0, []
        while offset < size:
            piece = read_piece(logs, "P1_S1_raw_J7.log", offset=offset, limit=limit)
            assert piece.size == size and piece.offset == offset and piece.next_offset > offset
            parts.append(piece.text)
            offset = piece.next_offset
        if limit >= 4:  # pieces of whole characters (a shorter limit cuts a 4-byte one)
            assert "".join(parts) == TEXT, limit


def test_the_tail_starts_at_a_whole_character(logs: Config) -> None:
    data = TEXT.encode()
    for limit in range(1, 40):
        piece = read_piece(logs, "P1_S1_raw_J7.log", offset=None, limit=limit)
        assert piece.next_offset == len(data) and "\ufffd" not in piece.text
        assert TEXT.endswith(piece.text) and len(data) - piece.offset <= limit
        assert len(piece.text.encode()) >= limit - 3  # at most the bytes of one cut character are left out
    whole = read_piece(logs, "P1_S1_raw_J7.log", offset=None, limit=1 << 20)
    assert whole.text == TEXT and whole.public("J7")["complete"] is True
    assert read_piece(logs, "P1_S1_raw_J7.log", offset=None, limit=10).public("J7")["complete"] is False


def test_bytes_that_are_not_utf8_show_as_replacement_characters(logs: Config) -> None:
    (logs.hook_logs / "P1_S1_raw_J8.log").write_bytes(b"ok \xff\xfe done\n")
    assert read_piece(logs, "P1_S1_raw_J8.log", offset=0, limit=100).text == "ok \ufffd\ufffd done\n"


def test_a_log_not_written_yet_is_empty(logs: Config) -> None:
    public = read_piece(logs, "P1_S1_raw_J9.log", offset=None, limit=100).public("J9")
    assert public == {"job_id": "J9", "log": "P1_S1_raw_J9.log", "exists": False, "size": 0, "offset": 0,
                      "next_offset": 0, "text": "", "complete": True}


@pytest.mark.parametrize(("offset", "limit", "words"), [
    (0, 0, "limit"), (0, (1 << 20) + 1, "limit"), (-1, 10, "offset"), (10 ** 6, 10, "past the end")])
def test_bad_offsets_and_limits_are_refused(logs: Config, offset: int, limit: int, words: str) -> None:
    with pytest.raises(ApiError) as refused:
        read_piece(logs, "P1_S1_raw_J7.log", offset=offset, limit=limit)
    assert refused.value.code == -32602 and words in refused.value.message


def test_a_link_in_the_log_dir_is_never_read_through(logs: Config, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the database password\n")
    (logs.hook_logs / "P1_S1_raw_J10.log").symlink_to(secret)
    with pytest.raises(ApiError) as refused:
        read_piece(logs, "P1_S1_raw_J10.log", offset=0, limit=100)
    assert refused.value.code == -32002 and "never through a link" in refused.value.message


def test_an_override_must_name_a_file_directly_in_the_log_dir(logs: Config) -> None:
    assert override_name(logs, str(logs.hook_logs / "custom.log")) == "custom.log"
    for outside in (str(logs.hook_logs / ".." / "admin.token"), "/etc/passwd", str(logs.hook_logs)):
        with pytest.raises(ApiError) as refused:
            override_name(logs, outside)
        assert refused.value.code == -32002


def test_old_run_logs_are_removed_and_nothing_else(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", hook_log_keep_s="7d")
    config.hook_logs.mkdir(parents=True)
    old_s = time.time() - 8 * 86400
    for name in ("P1_S1_raw_J1.log", "P1_S1.log", "custom.log", "krios-P2_S3_metadata_J2.log"):
        (config.hook_logs / name).write_text("x\n")
        os.utime(config.hook_logs / name, (old_s, old_s))
    (config.hook_logs / "P1_S1_raw_J3.log").write_text("recent\n")
    (config.hook_logs / "P1_S1_raw_J4.log").symlink_to(tmp_path / "elsewhere")
    assert prune(config) == 2
    assert sorted(p.name for p in config.hook_logs.iterdir()) == [
        "P1_S1.log", "P1_S1_raw_J3.log", "P1_S1_raw_J4.log", "custom.log"]
    assert prune(make_config(tmp_path / "state", hook_log_keep_s="0"), now_s=time.time() + 10 ** 9) == 0


def test_the_pruner_runs_at_most_hourly(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", hook_log_keep_s="1s")
    config.hook_logs.mkdir(parents=True)
    pruner = Pruner(config)
    (config.hook_logs / "P1_S1_raw_J1.log").write_text("x\n")
    os.utime(config.hook_logs / "P1_S1_raw_J1.log", (0, 0))
    assert pruner() == 1
    (config.hook_logs / "P1_S1_raw_J2.log").write_text("x\n")
    os.utime(config.hook_logs / "P1_S1_raw_J2.log", (0, 0))
    assert pruner() == 0 and (config.hook_logs / "P1_S1_raw_J2.log").exists()
