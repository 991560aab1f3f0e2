"""Atomic writes: the one writer of lungcad's files (outputs, training runs, caches, data sets)."""
from __future__ import annotations

import os

import pytest

from lungcad.results import atomic
from lungcad.results.atomic import atomic_path, atomic_write_bytes, atomic_write_text


def test_a_writer_that_wants_a_file_name_replaces_the_file_whole(tmp_path):
    target = tmp_path / "run" / "last.keras"
    with atomic_path(target, suffix=".keras") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".keras") and tmp.name.startswith(".last.keras.")
        assert not target.exists()                     # nothing at the target until the block ends
        tmp.write_bytes(b"one")
    assert target.read_bytes() == b"one" and os.listdir(target.parent) == ["last.keras"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK   # not mkstemp's 0600

    with pytest.raises(RuntimeError, match="killed"), atomic_path(target, suffix=".keras") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"one" and os.listdir(target.parent) == ["last.keras"]


def test_the_writes_sync_the_file_and_its_folder(tmp_path, monkeypatch):
    """fsync on the file before the rename and on the folder after it (what the copies in
    training and the data-set writer used to leave out)."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")),
                                                        real(fd))[1])
    atomic_write_text(tmp_path / "a.json", "{}\n")
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".a.json."))
    assert synced[1] == str(tmp_path)
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"


def test_training_and_data_set_writers_leave_no_temporary_files(tmp_path):
    """The model card and run state of training and the tables of `lungcad synth` go through it."""
    import pandas as pd

    from lungcad.synthetic.layouts import _write_csv, _write_json
    from lungcad.train.fit_loop import atomic_write_text as train_writer

    assert train_writer is atomic_write_text
    _write_csv(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.csv")
    _write_json({"b": 1}, tmp_path / "t.json")
    assert (tmp_path / "t.csv").read_text() == "a\n1\n2\n"
    assert (tmp_path / "t.json").read_text() == '{\n "b": 1\n}'
    assert sorted(os.listdir(tmp_path)) == ["t.csv", "t.json"]
