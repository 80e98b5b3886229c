"""Read a W&B offline run (``run-<id>.wandb``) back without the network, for tests.

The file is a LevelDB-style log of protobuf ``Record``s (wandb's ``sdk/internal/datastore.py``). This depends on wandb's
internal format, so wandb is pinned and ``test_wandb_header`` fails loudly if the header changes.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

BLOCK, HDR = 32768, 7
_CRC_SEED = {t: zlib.crc32(bytes([t])) for t in (1, 2, 3, 4)}


def iter_records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    buf = Path(path).read_bytes()
    if struct.unpack("<4sHB", buf[:7]) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: unknown .wandb header {buf[:7]!r}")
    pos, partial = 7, b""
    while pos + HDR <= len(buf):
        room = BLOCK - pos % BLOCK
        if room < HDR:
            pos += room
            continue
        crc, size, kind = struct.unpack("<IHB", buf[pos:pos + HDR])
        if size == 0 and kind == 0:
            pos += room
            continue
        data = buf[pos + HDR:pos + HDR + size]
        pos += HDR + size
        if zlib.crc32(data, _CRC_SEED[kind]) != crc:
            raise ValueError(f"{path}: CRC mismatch at byte {pos}")
        if kind == 2:
            partial = data
        elif kind == 3:
            partial += data
        else:
            payload, partial = (data if kind == 1 else partial + data), b""
            rec = pb.Record()
            rec.ParseFromString(payload)
            yield rec


def _key(item):
    return item.key or ".".join(item.nested_key)


def read_run(path) -> dict:
    run = {"history": [], "summary": {}, "config": {}, "run": None, "exit_code": None}
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            run["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for i in rec.summary.update:
                run["summary"][_key(i)] = json.loads(i.value_json)
        elif kind == "config":
            for i in rec.config.update:
                run["config"][_key(i)] = json.loads(i.value_json)
        elif kind == "run":
            r = rec.run
            run["run"] = {"id": r.run_id, "project": r.project, "name": r.display_name, "tags": list(r.tags)}
            for i in r.config.update:
                run["config"][_key(i)] = json.loads(i.value_json)
        elif kind == "exit":
            run["exit_code"] = rec.exit.exit_code
    return run


def find_offline_run(run_dir) -> Path:
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one offline W&B run under {run_dir}/wandb, found {files}")
    return files[0]
