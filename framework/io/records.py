"""What a run keeps about its edits: resuming finished edits, the settings digest, summary.json and the report.

Each edit's result.json records the digest of the settings and of the inputs it was made with; a
later run into the same output_dir skips an edit only when both match (otherwise it refuses, naming
the fix). At the end of a run, summary.json holds the resolved parameters, every edit's record and
the totals; with several processes, rank 0 merges theirs.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from framework.core.errors import ConfigError, EditError
from framework.core.mask_cache import request_digest
from framework.io.outputs import save_json, write_results_table

STAGE_SECONDS = ("encode", "inversion", "mask", "guidance", "final", "decode", "total")


def writable_folder(path: str) -> Path:
    """Create `path` if needed and check that files can be written there, before any model work."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output_dir '{folder}' is not writable ({err.strerror or err}); choose another "
                          f"with --model.output_dir.") from err
    return folder


class OutputLock:
    """An exclusive lock on an output folder (`<folder>/.lock`, an OS file lock): two runs writing one folder at once
    would edit the same requests twice and overwrite each other's summary. The OS releases it when the process ends,
    however it ends (kill -9 included), so a `.lock` file left behind never blocks a rerun; a run that ends
    normally removes it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._file = None

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform: the folder stays unlocked, as before
            return self
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise EditError(f"output_dir '{self.path.parent}' is in use by another run ({holder}): wait for it "
                                f"to end, or give this run its own --model.output_dir") from None
            # The holder before us may have removed the file between our open and our lock: a lock on a removed
            # file guards nothing, so lock the file that is there now.
            if self.path.exists() and os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            import fcntl

            self.path.unlink(missing_ok=True)  # while still held: a run waiting on it re-opens (see acquire)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def write_failure(err: OSError, what: str, kept: str = "this edit is not counted as finished") -> str:
    """One line for a file that could not be written: what, why, and the fix (a full disk, a quota, permissions)."""
    full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # EDQUOT: a quota; not on Windows
    fix = ("free disk space (or give --model.output_dir on another disk)" if full else
           "check that the folder is writable (or give another --model.output_dir)")
    return (f"{what} ({err.strerror or err}); finished edits are kept and {kept}: {fix}, then run the same command "
            f"again.")


def finished_record(output_dir: Path, request, settings: str, overwrite: bool, seed: Optional[int] = None,
                    weights: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The record of an edit already written by an earlier run (result.json is written last), or None.

    `seed`: the seed this run would edit the request with (checked apart from `settings`, which leaves out
    model.seed: it changes no edit whose request has its own); `weights`: the digest of this run's weights, to
    say so when a checkpoint changed at the same path since."""
    path = output_dir / request.id / "result.json"
    if overwrite or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not all((path.parent / name).is_file() for name in ("input.png", "edit.png")):
        return None  # images removed since: edit again
    if "settings" not in record or "inputs" not in record:
        raise EditError(f"{path.parent} holds an edit whose result.json does not record the settings and inputs "
                        "it was made with (written by an earlier version), so it cannot be resumed safely; give "
                        "this run its own model.output_dir, or set model.overwrite: true to edit again")
    if record["inputs"] != request_digest(request):
        raise EditError(f"{path.parent} holds an edit of other inputs (image, condition maps or prompts) under "
                        f"the id '{request.id}'; give this run its own model.output_dir, or set "
                        "model.overwrite: true to edit them again")
    if record["settings"] != settings and weights is not None and record.get("weights") not in (None, weights):
        raise EditError(f"{path.parent} holds an edit made with other settings than this run's: the model weights "
                        "changed since (a checkpoint at the same path was retrained or replaced), so it is not this "
                        "run's edit; give this run its own model.output_dir, or set model.overwrite: true to edit "
                        "again with the new weights")
    if record["settings"] == settings and seed is not None and record.get("seed", seed) != seed:
        raise EditError(f"{path.parent} holds an edit made with other settings than this run's (seed "
                        f"{record.get('seed')} there, {seed} here: model.seed, or the request's own `seed`); give "
                        "this run its own model.output_dir, or set model.overwrite: true to edit again")
    if record["settings"] != settings:
        raise EditError(f"{path.parent} holds an edit made with other settings than this run's (model weights, "
                        "method, lam, sampling, mask, ITO, losses, seed or precision), which a resumed run would "
                        "count as its own; give this run its own model.output_dir, or set model.overwrite: true "
                        "to edit again")
    return record


def summary(parameters: dict[str, Any], records: list[dict[str, Any]], processes: int) -> dict[str, Any]:
    """summary.json's content: parameters, every record, and totals (edits, failures, resumed, seconds)."""
    ok = [r for r in records if "error" not in r]
    totals = {key: round(sum(r["seconds"].get(key, 0.0) for r in ok), 3) for key in STAGE_SECONDS}
    return {"parameters": parameters, "edits": records,
            "totals": {"edits": len(ok), "failed": len(records) - len(ok),
                       "resumed": sum(1 for r in records if r.get("resumed")), "seconds": totals,
                       "processes": processes}}


def write_summary(module) -> None:
    """summary.json (and the report) of `module`'s run; with several processes, rank 0 merges theirs."""
    from framework.io.report import write_report

    trainer, output_dir = module.trainer, module.output_dir
    world = trainer.world_size
    if world > 1:
        save_json({"edits": module.records}, output_dir / f"summary.rank{module.global_rank}.json")
        trainer.strategy.barrier("edit-summaries")
        if module.global_rank != 0:
            return
        records = []
        for rank in range(world):
            part = output_dir / f"summary.rank{rank}.json"
            records += json.loads(part.read_text())["edits"]
            part.unlink()
        records.sort(key=lambda r: r["id"])
    else:
        records = module.records
    if not records:
        return
    content = summary(module.resolved_parameters(), records, world)
    if module.metrics and world == 1:
        content["metrics"] = {k: v for metric in module.metrics for k, v in metric.compute().items()}
        write_results_table(output_dir, records, content["metrics"])
        if not trainer.predicting:  # the run's scores also reach the loggers, as run/<key>
            for logger in module.loggers:
                logger.log_metrics({f"run/{k}": float(v) for k, v in content["metrics"].items()})
    try:
        save_json(content, output_dir / "summary.json")
        write_report(output_dir, records)
    except OSError as err:
        raise EditError(write_failure(err, f"summary.json or the report could not be written to {output_dir}",
                                      "a rerun resumes them and writes the summary")) from err
