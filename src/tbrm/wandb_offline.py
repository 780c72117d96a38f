"""Read the records of an offline W&B run (``<dir>/wandb/offline-run-*/run-*.wandb``).

wandb writes an offline run as one transaction log of protobuf ``Record`` messages in the LevelDB
log format (32 KiB blocks; each chunk has a 7-byte header of crc32, length and type, the crc over
the type byte and the payload). This reader turns it back into the run's config, history rows,
summary, tags and group, so tests and reports can check what was really written without a server.

wandb's service holds the last, partly filled block in memory until it closes the run's stream,
which happens *after* ``run.finish()`` returns (the service is told to finish and does so on its
own time). A file read right after ``finish()`` can therefore lack its last records: call
:func:`finish_and_wait` instead, which also waits for the service to close the file. A run killed
mid-write leaves a cut-short last chunk, which the reader drops (``complete`` is then False: the
run's exit record is missing).

A resumed run (``ckpt_path=...``) logs to the same run id from a second process: its records go
to a second ``offline-run-*`` folder. :func:`read_offline_runs` joins the folders of one id; rows
the resumed part logged again replace those of the first part.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

HEADER = struct.Struct("<4sHB")  # ident b":W&B", magic 0xBEE1, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path):
    """Yield the raw protobuf payloads of a ``.wandb`` file, reassembling chunked records; stop at
    the end of the written data (zero padding, a cut-short chunk or a checksum mismatch)."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size:
        raise ValueError(f"{path} is not a W&B transaction log (only {len(data)} bytes).")
    ident, magic, _ = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log (header {ident!r}, magic {magic:#x}).")
    pos, pending = HEADER.size, None
    while pos + CHUNK.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK.size:  # the rest of a block too small for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        start, pos = pos + CHUNK.size, pos + CHUNK.size + length
        payload = data[start:pos]
        if kind not in (FULL, FIRST, MIDDLE, LAST) or len(payload) < length:
            return  # zeros past the end, or a chunk the writer never finished
        if zlib.crc32(bytes([kind]) + payload) != crc:
            return  # a torn write
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif pending is not None:  # MIDDLE or LAST of a record whose FIRST was read
            pending += payload
            if kind == LAST:
                yield pending
                pending = None


def _value(item) -> object:
    key = ".".join(item.nested_key) if item.nested_key else item.key
    return key, json.loads(item.value_json)


def read_offline_run(run_dir: str | Path) -> dict:
    """``{"config", "history", "summary", "tags", "group", "id", "complete"}`` of one offline run
    directory; ``complete``: its exit record was written (the run finished and its file is whole)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    out: dict = {"config": {}, "history": [], "summary": {}, "tags": [], "group": "", "id": "", "complete": False}
    for payload in iter_records(files[0]):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(id=record.run.run_id, group=record.run.run_group, tags=list(record.run.tags))
            out["config"].update(dict(_value(i) for i in record.run.config.update))
        elif kind == "config":
            out["config"].update(dict(_value(i) for i in record.config.update))
        elif kind == "history":
            out["history"].append(dict(_value(i) for i in record.history.item))
        elif kind == "summary":
            out["summary"].update(dict(_value(i) for i in record.summary.update))
        elif kind == "exit":
            out["complete"] = True
    return out


def offline_run_id(run_dir: str | Path) -> str:
    """The run id in an offline run folder's name: ``offline-run-<date>_<time>-<id>``, with ``-<n>``
    added when a folder of that name exists already (a resumed run in the same second)."""
    match = re.fullmatch(r"offline-run-\d{8}_\d{6}-(.+?)(?:-\d+)?", Path(run_dir).name)
    return match.group(1) if match else Path(run_dir).name


def _step(row: dict) -> float:
    return float(row.get("trainer/global_step", row.get("_step", 0)))


def read_offline_runs(job_dir: str | Path) -> dict | None:
    """The newest W&B run of a job folder (``<job>/wandb/offline-run-*``), joined over the folders
    that share its id (a resumed run): config, tags and summary of the newest part; its history
    with each part's rows replacing the earlier parts' rows from its first step on."""
    dirs = sorted((Path(job_dir) / "wandb").glob("offline-run-*"))  # oldest first
    if not dirs:
        return None
    run_id = offline_run_id(dirs[-1])
    parts = [read_offline_run(d) for d in dirs if offline_run_id(d) == run_id]
    newest = parts[-1]
    history: list[dict] = []
    for part in parts:
        if part["history"]:
            first = _step(part["history"][0])
            history = [row for row in history if _step(row) < first] + part["history"]
    summary = {k: v for part in parts for k, v in part["summary"].items()}
    return {**newest, "history": history, "summary": summary, "parts": len(parts)}


def finish_and_wait() -> None:
    """``wandb.finish()``, then wait until wandb's service has written and closed every run file
    (``wandb.teardown()`` returns when the service process has exited)."""
    import wandb

    wandb.finish()
    wandb.teardown()
