"""Atomic writes: all or nothing, and the same file mode a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from segedge import io


def test_atomic_write_replaces_whole_file_with_plain_mode(tmp_path):
    p = io.write_text_atomic(tmp_path / "a.json", "one")
    io.write_json_atomic(p, {"k": 2})
    assert p.read_text().strip() == '{\n  "k": 2\n}'
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert stat.S_IMODE(os.stat(p).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path):
    p = io.write_text_atomic(tmp_path / "m.json", "old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert p.read_text() == "old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.json"]
