"""Read the records of an offline W&B run (``<dir>/wandb/offline-run-*/run-*.wandb``).

wandb writes an offline run as one transaction log of protobuf ``Record`` messages in the LevelDB
log format (32 KiB blocks; each chunk has a 7-byte header of crc32, length and type). This reader
turns it back into the run's config, history rows, summary, tags and group, so tests and reports
can check what was really written without a server.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

HEADER = struct.Struct("<4sHB")  # ident b":W&B", magic 0xBEE1, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path):
    """Yield the raw protobuf payloads of a ``.wandb`` file, reassembling chunked records."""
    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log (header {ident!r}, magic {magic:#x}).")
    pos, pending = HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK.size:  # the rest of a block too small for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        pos += CHUNK.size
        payload, pos = data[pos : pos + length], pos + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""
        else:
            break  # zero padding at the end of the file


def _value(item) -> object:
    key = ".".join(item.nested_key) if item.nested_key else item.key
    return key, json.loads(item.value_json)


def read_offline_run(run_dir: str | Path) -> dict:
    """``{"config", "history", "summary", "tags", "group", "id"}`` of one offline run directory."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    out: dict = {"config": {}, "history": [], "summary": {}, "tags": [], "group": "", "id": ""}
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
    return out
