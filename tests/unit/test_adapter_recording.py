"""The recording adapter's file is read while it is written (tests poll it during bursts)."""

from __future__ import annotations

from pathlib import Path

from exchange.adapters.recording import read_records


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "handovers.jsonl"
    assert read_records(path) == []
    path.write_bytes(b'{"message_id": "a"}\n{"message_id": "b"}\n{"message_id": "c", "recip')
    assert [r["message_id"] for r in read_records(path)] == ["a", "b"]
    with path.open("ab") as f:
        f.write(b'ient": "x"}\n')
    assert [r["message_id"] for r in read_records(path)] == ["a", "b", "c"]
