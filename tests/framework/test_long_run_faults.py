"""Faults that sweeps of thousands of edits meet: a full disk, two runs in one folder, a checkpoint changed between a
run and its resume. (A damaged mask-cache entry: tests/framework/test_mask_cache.py.)"""

from __future__ import annotations

import errno
import json
import os

import pytest
from PIL import Image

from framework.core.errors import EditError
from framework.io.records import OutputLock
from framework.lightning.cli import EditCLI, main
from tests.framework.test_cli import FAST, write_config


def test_a_full_disk_while_an_edit_is_written_is_one_line_and_a_rerun_redoes_only_that_edit(
        tmp_path, tiny_dirs, manifest, capsys, monkeypatch):
    out = tmp_path / "out"
    config = write_config(tmp_path / "e.yaml", tiny_dirs, manifest, out)
    save = Image.Image.save
    written = []

    def full_disk(image, fp, *args, **kwargs):  # the disk fills up on the third file of edit 'pose'
        if "/pose/" in str(fp):
            written.append(fp)
            if len(written) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *FAST])
    assert exit_info.value.code == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "Edit 'pose': its files could not be written" in error[0]
    assert "No space left on device" in error[0] and "free disk space" in error[0]
    pose = out / "pose"
    assert not (pose / "result.json").exists() and not [p for p in pose.iterdir() if p.name.startswith(".")]
    assert (out / "text" / "result.json").exists()
    monkeypatch.setattr(Image.Image, "save", save)  # space freed
    main(["fit", "--config", str(config), *FAST])
    totals = json.loads((out / "summary.json").read_text())["totals"]
    assert (totals["edits"], totals["resumed"]) == (2, 1)  # 'text' kept, 'pose' edited again


def test_a_second_run_into_a_folder_in_use_is_refused_and_the_lock_ends_with_its_run(tmp_path, tiny_dirs, manifest,
                                                                                      capsys):
    out = tmp_path / "out"
    out.mkdir()
    config = write_config(tmp_path / "e.yaml", tiny_dirs, manifest, out)
    other = OutputLock(out).acquire()  # a run in progress (another open of the file: a lock of its own)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"output_dir '{out}' is in use by another run (pid " in err and "--model.output_dir" in err
    assert not (out / "text").exists()  # refused before any edit
    other.release()
    main(["fit", "--config", str(config), *FAST])
    assert EditCLI.output_lock is None
    assert not (out / ".lock").exists()  # released and removed with the run
    OutputLock(out).acquire().release()


def test_output_lock_refuses_a_second_holder_until_released_and_a_left_file_blocks_nothing(tmp_path):
    first = OutputLock(tmp_path).acquire()
    assert f"pid {os.getpid()} on " in (tmp_path / ".lock").read_text()
    with pytest.raises(EditError, match="is in use by another run"):
        OutputLock(tmp_path).acquire()
    first.release()
    (tmp_path / ".lock").write_text("pid 1 on elsewhere")  # left by a run killed with -9: no OS lock on it
    OutputLock(tmp_path).acquire().release()
