"""`livedm admin backup` writes FILE only once the whole backup is in FILE.partial, a new file of its own
(the attacks on it, through a real livedmd, are in tests/e2e/test_attack_restore.py)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from livedm.client import cli
from livedm.client.backup_file import BackupNotWritten, end_line_documents, write_backup
from livedm.client.rpc import LivedmError

HEADER = b'{"livedm_backup": 2}\n'
END = b'{"livedm_backup_end": {"counts": {"projects": 1, "users": 2}}}\n'
WHOLE = HEADER + b'{"collection": "projects", "doc": {}}\n' * 3 + END


def served(body: bytes) -> io.BytesIO:
    return io.BytesIO(body)


def test_a_whole_backup_lands_at_its_name_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "livedm.ndjson"
    assert write_backup(lambda: served(WHOLE), path) == (len(WHOLE), 3)
    assert path.read_bytes() == WHOLE and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["livedm.ndjson"]


@pytest.mark.parametrize("body", [HEADER, WHOLE[:-10], b""], ids=["header only", "cut mid-line", "empty"])
def test_a_backup_cut_short_leaves_the_old_one_in_place(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "livedm.ndjson"
    path.write_bytes(b"yesterday's backup")
    with pytest.raises(BackupNotWritten, match="stopped before its end"):
        write_backup(lambda: served(body), path)
    assert path.read_bytes() == b"yesterday's backup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["livedm.ndjson"]


def test_a_refused_request_leaves_no_partial_file(tmp_path: Path) -> None:
    def refuse() -> io.BytesIO:
        raise LivedmError("backup and restore need an admin")

    with pytest.raises(LivedmError):
        write_backup(refuse, tmp_path / "livedm.ndjson")
    assert list(tmp_path.iterdir()) == []


def test_a_partial_file_swapped_while_writing_is_refused_and_left_alone(tmp_path: Path) -> None:
    """In a directory others may write, another user renames ours away and puts theirs in its place."""
    path = tmp_path / "livedm.ndjson"
    partial = tmp_path / "livedm.ndjson.partial"

    class Swapping(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if partial.exists() and not (tmp_path / "ours").exists():
                partial.rename(tmp_path / "ours")
                partial.write_bytes(b"theirs")
            return super().read(size)

    with pytest.raises(BackupNotWritten, match="removed or replaced while the backup was written"):
        write_backup(lambda: Swapping(WHOLE), path)
    assert not path.exists() and partial.read_bytes() == b"theirs"


def test_a_partial_file_already_there_is_refused_before_asking_livedmd(tmp_path: Path) -> None:
    (tmp_path / "livedm.ndjson.partial").write_bytes(b"")
    asked: list[bool] = []

    def source() -> io.BytesIO:
        asked.append(True)
        return served(WHOLE)

    with pytest.raises(BackupNotWritten) as refused:
        write_backup(source, tmp_path / "livedm.ndjson")
    assert f"rm {tmp_path / 'livedm.ndjson.partial'}" in str(refused.value) and asked == []


def test_a_directory_that_is_not_there_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(BackupNotWritten, match=r"cannot create .*No such file or directory; nothing was written"):
        write_backup(lambda: served(WHOLE), tmp_path / "missing" / "livedm.ndjson")


@pytest.mark.parametrize(("tail", "documents"), [
    (WHOLE, 3), (END + b"\n\n", 3), (HEADER, None), (b"", None), (b"not json\n", None), (b"[1, 2]\n", None),
    (b'{"livedm_backup_end": {"counts": []}}\n', None),
])
def test_the_end_line_gives_the_document_count(tail: bytes, documents: int | None) -> None:
    assert end_line_documents(tail) == documents


def test_the_command_says_what_to_do_when_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    partial = tmp_path / "b.ndjson.partial"
    os.symlink(tmp_path / "target", partial)
    monkeypatch.setenv("LIVEDM_URL", "http://127.0.0.1:9")  # never reached: the refusal comes first
    assert cli.main(["admin", "backup", str(tmp_path / "b.ndjson")]) == cli.EXIT_SERVER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("livedm admin backup: ") and f"rm {partial}" in err
    assert not (tmp_path / "target").exists()  # the link was not followed
