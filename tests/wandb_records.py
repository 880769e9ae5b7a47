"""Read back what a W&B offline run wrote: the records of its ``run-<id>.wandb`` file.

The file is W&B's append-only log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks,
each ``crc32 (4) | length (2) | type (1) | data`` (types: 1 full, 2 first, 3 middle, 4 last), a record being the
concatenated chunks, a ``wandb_internal_pb2.Record`` protobuf. Only reading: checksums are not verified.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # zero padding up to the block's end
            pos += room
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return [wandb_internal_pb2.Record.FromString(r) for r in out]


def offline_run(run_folder: str | Path) -> dict:
    """``{"id", "group", "tags", "name", "summary": {key: value}, "metrics": {name: {aggregations}},
    "history_keys": set, "tables": {name: rows}}`` of an ``offline-run-*`` folder (the final summary: the latest
    update of each key; ``tables``: the logged W&B tables, a plot's data table named ``<plot>_table``)."""
    (path,) = Path(run_folder).glob("run-*.wandb")
    info: dict = {"summary": {}, "metrics": {}, "history_keys": set()}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info.update(id=record.run.run_id, group=record.run.run_group, name=record.run.display_name,
                        tags=list(record.run.tags))
        elif kind == "summary":
            for item in record.summary.update:
                info["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "metric":
            m = record.metric
            info["metrics"][m.name] = {a for a in ("min", "max", "mean", "last", "first") if getattr(m.summary, a)}
        elif kind == "history":
            info["history_keys"] |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    info["tables"] = {key[: -len("/_type")]: info["summary"].get(key[: -len("_type")] + "nrows")
                      for key, value in info["summary"].items() if key.endswith("/_type") and value == "table-file"}
    return info
