#!/usr/bin/env python
"""Download the four video benchmarks into the layout lmms-eval 0.7.3 expects, and verify what is on disk.

The data root is an ``$HF_HOME``-like folder (default ``$TANGO_DATA``, else ``$HF_HOME``, else
``~/.cache/huggingface``); the layout is documented in ``tango/tasks/layout.py``. With ``--data-root $HF_HOME`` the
built-in lmms-eval tasks find the videos too; the offline overrides (``python -m tango.tasks``) work for any root.

    # on a machine with network access (downloads resume: re-run the same command after an interruption)
    export TANGO_DATA=/data/hf
    python scripts/prepare_data.py download videomme mlvu_dev mvbench
    python scripts/prepare_data.py download longvideobench_val_v       # gated, see below
    python scripts/prepare_data.py download all --workers 16

    # anywhere (offline): count expected vs present videos, decode each one's sampled frames and list problems
    python scripts/prepare_data.py verify all
    python scripts/prepare_data.py verify mvbench --no-decode --json report.json

    # then write the offline task overrides and run
    python -m tango.tasks --data-root "$TANGO_DATA"
    python run.py model=llava_ov method=tango task=videomme_local

Hub sources (the ids / revisions of lmms-eval's built-in YAMLs):

=========================  ===============================  ========  =============================================
benchmark                  repo (dataset)                   revision  files
=========================  ===============================  ========  =============================================
``videomme``               lmms-eval/Video-MME              main      videomme/test-*.parquet, videos_chunked_*.zip
                                                                      -> videomme/data/<videoID>.mp4
``mlvu_dev``               sy1998/MLVU_dev                  main      mlvu/test-*.parquet, *.zip -> mlvu/<video_name>
``longvideobench_val_v``   longvideobench/LongVideoBench    main      validation-*.parquet, videos.tar.part.*
                                                                      -> datasets/longvideobench/videos/
``mvbench``                OpenGVLab/MVBench                video     json/*.json + the videos; plus
                                                                      video/data0613.zip (main)
                                                                      -> mvbench_video/data0613/
=========================  ===============================  ========  =============================================

LongVideoBench is gated: open https://huggingface.co/datasets/longvideobench/LongVideoBench while logged in,
tick the boxes of its access form (non-commercial use, CC-BY-NC-SA 4.0) and submit, then on the download machine
log in with the same account: ``hf auth login`` (``huggingface-cli login`` with older huggingface_hub) or
``export HF_TOKEN=hf_...``. Without that, download stops with a message saying so (GatedRepoError).

Resuming: ``snapshot_download`` keeps finished files in ``<data_root>/hub`` and re-fetches only missing or
incomplete ones; extraction skips members already on disk with the right size and marks finished archives in
``<video folder>/.tango_extracted/``. ``--delete-archives`` frees the archive space afterwards (re-running download
then fetches them again).

Exit status of ``verify``: 0 when every expected video is present and readable, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from tango.tasks.layout import (
    BENCHMARKS,
    find_annotations,
    mvbench_subtasks,
    resolve_benchmark,
    video_path,
)
from tango.video import BACKENDS, read_clip

ALL = "all"
DOWNLOAD_PATTERNS = {
    "videomme": ["videomme/test-*.parquet", "videos_chunked_*.zip"],
    "mlvu_dev": ["mlvu/test-*.parquet", "*.zip"],
    "longvideobench_val_v": ["validation-*.parquet", "lvb_val.json", "videos.tar.part.*"],
    "mvbench": None,  # the whole `video` revision: json/*.json and the video folders
}
VIDEO_COLUMN = {"videomme": "videoID", "mlvu_dev": "video_name", "longvideobench_val_v": "video_path",
                "mvbench": "video"}
GATED_HELP = ("{repo} is gated: open https://huggingface.co/datasets/{repo} while logged in, accept its terms, then "
              "run `hf auth login` (or `huggingface-cli login`, or export HF_TOKEN) and re-run this command.")
DONE_DIR = ".tango_extracted"


def default_data_root() -> str:
    return (os.environ.get("TANGO_DATA") or os.environ.get("HF_HOME")
            or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))


def parse_benchmarks(names: list[str]) -> list[str]:
    """Built-in keys for ``names`` (``all``, keys, local task or harness names); ValueError naming valid ones."""
    if not names or ALL in names:
        return list(BENCHMARKS)
    return list(dict.fromkeys(resolve_benchmark(n).key for n in names))


# ----------------------------------------------------------------------------------------------------------------
# download
# ----------------------------------------------------------------------------------------------------------------


def _snapshot(repo: str, revision: str, data_root: Path, patterns, workers: int) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError

    try:
        return Path(snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, allow_patterns=patterns,
                                      cache_dir=str(data_root / "hub"), max_workers=workers, etag_timeout=60))
    except GatedRepoError as e:
        raise SystemExit(GATED_HELP.format(repo=repo) + f"\n({type(e).__name__}: {e})") from e


def _done_marker(dest: Path, archive: Path) -> Path:
    return dest / DONE_DIR / (archive.name + ".done")


def _write_member(dest: Path, name: str, size: int, open_src, archive: Path) -> int:
    """Write one archive member under ``dest`` (via a ``.part`` file renamed into place); 0 if a file of the same
    size is already there, 1 if written. Refuses members that would land outside ``dest``."""
    target = Path(os.path.normpath(dest.absolute() / name))  # no symlink resolution: dest may hold links
    if not str(target).startswith(str(dest.absolute()) + os.sep):
        raise ValueError(f"{archive}: member {name!r} would be written outside {dest}")
    if target.is_file() and target.stat().st_size == size:
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with open_src() as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, target)
    return 1


def extract_zip(archive: Path, dest: Path, strip_prefix: str = "") -> int:
    """Extract ``archive`` into ``dest``, skipping members already there with the right size; returns the number
    written. ``strip_prefix``: a leading folder removed from member names. Marks the archive done at the end."""
    marker = _done_marker(dest, archive)
    if marker.exists():
        return 0
    written = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename[len(strip_prefix):] if strip_prefix and info.filename.startswith(strip_prefix) \
                else info.filename
            if not name or name.endswith("/") or name.startswith("__MACOSX/"):
                continue
            written += _write_member(dest, name, info.file_size, lambda: zf.open(info), archive)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("ok\n")
    return written


class _ConcatReader(io.RawIOBase):
    """The byte concatenation of ``parts`` as one stream (split tar archives, without writing the joined file)."""

    def __init__(self, parts: list[Path]):
        self._parts, self._f = list(parts), None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            if self._f is None:
                if not self._parts:
                    return 0
                self._f = open(self._parts.pop(0), "rb")  # noqa: SIM115 (closed when exhausted)
            n = self._f.readinto(b)
            if n:
                return n
            self._f.close()
            self._f = None


def extract_tar_parts(parts: list[Path], dest: Path) -> int:
    """Stream-extract the concatenation of ``parts`` (sorted) into ``dest``, skipping members already there with
    the right size; marks the set done at the end."""
    parts = sorted(parts)
    marker = _done_marker(dest, parts[0].with_name(parts[0].name.split(".tar")[0] + ".tar"))
    if marker.exists():
        return 0
    written = 0
    with tarfile.open(fileobj=io.BufferedReader(_ConcatReader(parts), 1 << 20), mode="r|*") as tf:
        for member in tf:
            if not member.isfile():
                continue
            written += _write_member(dest, member.name, member.size, lambda: tf.extractfile(member), parts[0])
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("ok\n")
    return written


def _copy_annotations(snap: Path, pattern: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(snap.glob(pattern)):
        target = dest / f.name
        if not target.exists() or target.stat().st_size != f.stat().st_size:
            shutil.copyfile(f, target)


def _maybe_delete(files, delete: bool) -> None:
    if delete:
        for f in files:
            Path(os.path.realpath(f)).unlink(missing_ok=True)  # the blob behind the snapshot link
            Path(f).unlink(missing_ok=True)


def download(key: str, data_root: Path, workers: int = 8, delete_archives: bool = False) -> None:
    b = BENCHMARKS[key]
    print(f"[prepare_data] {key}: {b.hub_repo}@{b.hub_revision} -> {data_root}", flush=True)
    snap = _snapshot(b.hub_repo, b.hub_revision, data_root, DOWNLOAD_PATTERNS[key], workers)
    zipped = {"videomme": ("videomme", "videos_chunked_*.zip", "videomme/test-*.parquet"),
              "mlvu_dev": ("mlvu", "*.zip", "mlvu/test-*.parquet")}
    if key in zipped:
        folder, pattern, annotations = zipped[key]
        dest = data_root / folder
        zips = sorted(snap.glob(pattern))
        for z in zips:
            print(f"  extracting {z.name}: {extract_zip(z, dest)} new files", flush=True)
        _copy_annotations(snap, annotations, dest)
        _maybe_delete(zips, delete_archives)
    elif key == "longvideobench_val_v":
        dest = data_root / "datasets" / "longvideobench"
        parts = sorted(snap.glob("videos.tar.part.*"))
        if parts:
            print(f"  extracting {len(parts)} tar parts: {extract_tar_parts(parts, dest)} new files", flush=True)
        _copy_annotations(snap, "validation-*.parquet", dest)
        _maybe_delete(parts, delete_archives)
    elif key == "mvbench":
        _link_mvbench(snap, data_root / "mvbench_video")
        dest = data_root / "mvbench_video"
        for z in sorted(snap.glob("**/*.zip")):  # lmms-eval unzips any archive of the snapshot into the cache dir
            print(f"  extracting {z.name}: {extract_zip(z, dest)} new files", flush=True)
        _data0613(data_root, dest)
    print(f"[prepare_data] {key}: done; check with: python scripts/prepare_data.py verify {key} "
          f"--data-root {data_root}", flush=True)


def _link_mvbench(snap: Path, dest: Path) -> None:
    """``dest`` becomes a real folder with one link per top-level entry of the `video` snapshot (so data0613 can be
    extracted next to them without writing into the hub cache). lmms-eval's built-in task accepts it as is."""
    if dest.is_symlink():  # an older lmms-eval-made link to the whole snapshot
        dest.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    for entry in snap.iterdir():
        link = dest / entry.name
        if link.is_symlink() and os.readlink(link) != str(entry):
            link.unlink()
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry, target_is_directory=entry.is_dir())


def _data0613(data_root: Path, dest: Path) -> None:
    """The re-released clevrer / star videos (lmms-eval issue #403) from ``video/data0613.zip`` on `main`, extracted
    to ``mvbench_video/data0613/`` (where the built-in task looks for them)."""
    from huggingface_hub import hf_hub_download

    out = dest / "data0613"
    archive = Path(hf_hub_download("OpenGVLab/MVBench", "video/data0613.zip", repo_type="dataset", revision="main",
                                   cache_dir=str(data_root / "hub"), etag_timeout=60))
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if not n.startswith("__MACOSX/")]
    prefix = "data0613/" if names and all(n.startswith("data0613/") for n in names) else ""
    out.mkdir(parents=True, exist_ok=True)
    print(f"  extracting data0613.zip: {extract_zip(archive, out, strip_prefix=prefix)} new files", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------------------------------------


def _read_column(files: list[str], column: str) -> list[str]:
    out = []
    for f in files:
        if f.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(f)
            if column not in table.column_names:
                raise ValueError(f"{f} has no column {column!r}; columns: {table.column_names}")
            out += [str(v) for v in table.column(column).to_pylist()]
        else:
            with open(f) as fh:
                text = fh.read()
            rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                            if x.strip()]
            missing = [i for i, r in enumerate(rows) if column not in r]
            if missing:
                raise ValueError(f"{f}: row {missing[0]} has no field {column!r}")
            out += [str(r[column]) for r in rows]
    return out


def expected_videos(key: str, data_root: Path) -> list[str]:
    """Every distinct video path the benchmark's docs ask for (the override tasks' path rule)."""
    b = BENCHMARKS[key]
    video_dir = str((data_root / b.video_dir).absolute())
    paths: list[str] = []
    if key == "mvbench":
        for sub in mvbench_subtasks():
            for v in _read_column(find_annotations(b, data_root, sub), VIDEO_COLUMN[key]):
                paths.append(video_path(key, {"video": v}, video_dir, sub))
    else:
        for v in _read_column(find_annotations(b, data_root), VIDEO_COLUMN[key]):
            paths.append(video_path(key, {VIDEO_COLUMN[key]: v}, video_dir))
    return list(dict.fromkeys(paths))


def check_video(path: str, num_frames: int = 32, backend: str = "decord") -> str | None:
    """None if ``path`` decodes to the frames its header declares and its ``num_frames`` sampled frames read as the
    harness reads them (``tango.video.read_clip``), else the reason."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        read_clip(path, num_frames, backend=backend)
        return None
    except Exception as e:  # noqa: BLE001 (decoders raise many types for broken files)
        return f"{type(e).__name__}: {e}"


def verify(keys: list[str], data_root: Path, decode: bool = True, workers: int = 4, num_frames: int = 32,
           backend: str = "decord", limit: int | None = None) -> dict:
    """Per benchmark: expected / present / missing / unreadable videos (``limit``: only the first N expected)."""
    report = {}
    for key in keys:
        try:
            expected = expected_videos(key, data_root)
        except (FileNotFoundError, ValueError) as e:
            report[key] = {"error": str(e), "expected": 0, "present": 0, "missing": [], "unreadable": {}}
            continue
        if limit is not None:
            expected = expected[:limit]
        present = [p for p in expected if os.path.isfile(p)]
        missing = [p for p in expected if not os.path.isfile(p)]
        unreadable = {}
        if decode and present:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for p, err in zip(present, pool.map(lambda q: check_video(q, num_frames, backend), present)):
                    if err is not None:
                        unreadable[p] = err
        report[key] = {"expected": len(expected), "present": len(present), "missing": missing,
                       "unreadable": unreadable, "decoded": decode}
    return report


def print_report(report: dict, show: int = 20, out=None) -> bool:
    """Print ``report`` (to ``out``, default stdout); True when everything is present and readable."""
    out = sys.stdout if out is None else out
    ok = True
    for key, r in report.items():
        if "error" in r:
            ok = False
            print(f"{key}: ERROR {r['error']}", file=out)
            continue
        bad = len(r["missing"]) + len(r["unreadable"])
        ok &= bad == 0
        checked = "readable" if r.get("decoded") else "not decoded"
        print(f"{key}: {r['present']}/{r['expected']} videos present, {len(r['missing'])} missing, "
              f"{len(r['unreadable'])} unreadable ({checked})", file=out)
        for p in r["missing"][:show]:
            print(f"  missing     {p}", file=out)
        for p, err in list(r["unreadable"].items())[:show]:
            print(f"  unreadable  {p}: {err}", file=out)
        if bad > 2 * show:
            print(f"  ... {bad - 2 * show} more (use --json for the full list)", file=out)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    names = f"{sorted(BENCHMARKS)} or {ALL}"
    for cmd in ("download", "verify"):
        s = sub.add_parser(cmd)
        s.add_argument("benchmarks", nargs="+", metavar="BENCHMARK", help=names)
        s.add_argument("--data-root", default=default_data_root(),
                       help="$HF_HOME-like folder (default: $TANGO_DATA, else $HF_HOME: %(default)s)")
        s.add_argument("--workers", type=int, default=8 if cmd == "download" else 4)
    sub.choices["download"].add_argument("--delete-archives", action="store_true",
                                         help="delete zips / tar parts once extracted")
    v = sub.choices["verify"]
    v.add_argument("--no-decode", action="store_true", help="only check that the files exist")
    v.add_argument("--num-frames", type=int, default=32, help="frames sampled per video, as the runs read them")
    v.add_argument("--backend", default="decord", choices=BACKENDS, help="decoder, as model.video_backend")
    v.add_argument("--limit", type=int, default=None, help="check only the first N videos of each benchmark")
    v.add_argument("--show", type=int, default=20, help="list at most N missing and N unreadable per benchmark")
    v.add_argument("--json", default=None, help="write the full report here")
    args = p.parse_args(argv)

    try:
        keys = parse_benchmarks(args.benchmarks)
    except ValueError as e:
        p.error(str(e))
    data_root = Path(os.path.expanduser(args.data_root)).absolute()
    if args.command == "download":
        data_root.mkdir(parents=True, exist_ok=True)
        for key in keys:
            download(key, data_root, workers=args.workers, delete_archives=args.delete_archives)
        return 0
    if not data_root.is_dir():
        p.error(f"--data-root {data_root} does not exist")
    report = verify(keys, data_root, decode=not args.no_decode, workers=args.workers, num_frames=args.num_frames,
                    backend=args.backend, limit=args.limit)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if print_report(report, show=args.show) else 1


if __name__ == "__main__":
    sys.exit(main())
