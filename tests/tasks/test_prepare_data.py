"""scripts/prepare_data.py: `verify` on a fake local layout (videos present, one missing, one corrupt, one empty,
one truncated)
and the resumable archive extraction that `download` uses (the download itself needs the network)."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from faults import write_truncated_mp4
from tango_tasks_fixtures import MLVU_DOCS, build_data_root

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prepare_data.py"


def _load():
    spec = importlib.util.spec_from_file_location("tango_prepare_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


prepare = _load()


@pytest.fixture(scope="module")
def broken_root(tmp_path_factory):
    """All four benchmarks; mlvu count_2.mp4 missing, one LongVideoBench video corrupt, one MVBench video empty,
    one truncated."""
    root = tmp_path_factory.mktemp("hf_home")
    videos = build_data_root(root)
    missing = root / "mlvu" / MLVU_DOCS[1]["video_name"]
    missing.unlink()
    corrupt = Path(videos["longvideobench_val_v"][1])
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    empty = Path(videos["mvbench"][5])
    empty.write_bytes(b"")
    truncated = write_truncated_mp4(Path(videos["mvbench"][6]))  # a whole header: only decoding frames finds it
    return root, str(missing), str(corrupt), str(empty), str(truncated)


@pytest.mark.unit
def test_verify_counts_expected_present_missing_and_unreadable(broken_root):
    root, missing, corrupt, empty, truncated = broken_root
    report = prepare.verify(list(prepare.BENCHMARKS), root, workers=2)
    summary = {k: (r["expected"], r["present"], len(r["missing"]), len(r["unreadable"])) for k, r in report.items()}
    assert summary == {"videomme": (2, 2, 0, 0), "mlvu_dev": (4, 3, 1, 0), "longvideobench_val_v": (4, 4, 0, 1),
                       "mvbench": (40, 40, 0, 2)}
    assert report["mlvu_dev"]["missing"] == [missing]
    assert list(report["longvideobench_val_v"]["unreadable"]) == [corrupt]
    assert report["mvbench"]["unreadable"][truncated].startswith("VideoDecodeError: decoded 18 of the 48 frames its header declares")
    assert report["mvbench"]["unreadable"][empty] == "empty file"
    # MVBench's moving_count videos exist only under data0613/: found through the fallback, so not missing.
    assert not any("moving_count" in p for p in report["mvbench"]["missing"])

    out = io.StringIO()
    assert prepare.print_report(report, out=out) is False
    text = out.getvalue()
    assert "mlvu_dev: 3/4 videos present, 1 missing, 0 unreadable (readable)" in text
    assert f"missing     {missing}" in text and f"unreadable  {corrupt}: " in text
    # Without decoding only presence is checked.
    quick = prepare.verify(["longvideobench_val_v", "videomme"], root, decode=False)
    assert quick["longvideobench_val_v"]["unreadable"] == {} and prepare.print_report(quick, out=io.StringIO())


@pytest.mark.unit
def test_verify_cli_exit_codes_and_errors(broken_root, tmp_path, capsys):
    root = broken_root[0]
    assert prepare.main(["verify", "videomme", "--data-root", str(root)]) == 0
    assert "videomme: 2/2 videos present, 0 missing, 0 unreadable" in capsys.readouterr().out
    assert prepare.main(["verify", "longvideobench", "--data-root", str(root), "--json", str(tmp_path / "r.json")]) == 1
    assert '"unreadable"' in (tmp_path / "r.json").read_text()
    with pytest.raises(SystemExit) as e:
        prepare.main(["verify", "videomm", "--data-root", str(root)])
    assert e.value.code == 2 and "unknown benchmark 'videomm'" in capsys.readouterr().err
    assert prepare.main(["verify", "mvbench", "--data-root", str(tmp_path)]) == 1  # no annotations there
    assert "mvbench: ERROR no annotations for mvbench subtask" in capsys.readouterr().out
    # As a script (what users run): all benchmarks, one missing + two unreadable -> exit status 1.
    p = subprocess.run([sys.executable, str(SCRIPT), "verify", "all", "--data-root", str(root), "--no-decode"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "mlvu_dev: 3/4 videos present, 1 missing" in p.stdout and "mvbench: 40/40 videos present" in p.stdout


@pytest.mark.unit
def test_extraction_resumes_and_skips_finished_archives(tmp_path):
    src = tmp_path / "videos_chunked_01.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("data/a.mp4", b"a" * 10)
        zf.writestr("data/b.mp4", b"b" * 20)
    dest = tmp_path / "videomme"
    assert prepare.extract_zip(src, dest) == 2 and (dest / "data" / "b.mp4").read_bytes() == b"b" * 20
    assert prepare.extract_zip(src, dest) == 0  # marked done
    (dest / ".tango_extracted" / "videos_chunked_01.zip.done").unlink()
    (dest / "data" / "a.mp4").write_bytes(b"a")  # a partial file from an interrupted run
    assert prepare.extract_zip(src, dest) == 1 and (dest / "data" / "a.mp4").read_bytes() == b"a" * 10

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in [("videos/x.mp4", b"x" * 3000), ("videos/y.mp4", b"y" * 5000)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    parts = []
    for i, suffix in enumerate(("aa", "ab", "ac")):  # videos.tar.part.aa ... like LongVideoBench
        part = tmp_path / f"videos.tar.part.{suffix}"
        part.write_bytes(blob[i * len(blob) // 3:(i + 1) * len(blob) // 3])
        parts.append(part)
    lvb = tmp_path / "longvideobench"
    assert prepare.extract_tar_parts(parts[::-1], lvb) == 2
    assert (lvb / "videos" / "y.mp4").read_bytes() == b"y" * 5000
    assert prepare.extract_tar_parts(parts, lvb) == 0

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.mp4", b"x")
    with pytest.raises(ValueError, match="outside"):
        prepare.extract_zip(evil, tmp_path / "safe")


@pytest.mark.unit
def test_benchmark_arguments():
    assert prepare.parse_benchmarks(["all"]) == ["videomme", "mlvu_dev", "longvideobench_val_v", "mvbench"]
    assert prepare.parse_benchmarks(["mlvu", "mlvu_dev", "mvbench_local"]) == ["mlvu_dev", "mvbench"]
    with pytest.raises(ValueError, match=r"unknown benchmark 'egoschema'; valid: \['longvideobench_val_v'"):
        prepare.parse_benchmarks(["egoschema"])
    assert set(prepare.DOWNLOAD_PATTERNS) == set(prepare.BENCHMARKS)


@pytest.mark.unit
def test_download_layout_with_a_fake_hub(tmp_path, monkeypatch):
    """`download` with the hub replaced by local snapshots (archives as on the hub) leaves the layout that `verify`
    and the task overrides expect. Only the network call is faked."""
    src = tmp_path / "src"
    build_data_root(src)  # the extracted truth, repackaged below the way each repo ships it
    snaps = {k: tmp_path / "snap" / k for k in prepare.BENCHMARKS}

    def zip_dir(archive: Path, folder: Path, arc_root: Path) -> None:
        archive.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive, "w") as zf:
            for f in sorted(folder.rglob("*.mp4")):
                zf.write(f, f.relative_to(arc_root).as_posix())

    s = snaps["videomme"]
    (s / "videomme").mkdir(parents=True)
    shutil.copy(src / "videomme" / "test-00000-of-00001.parquet", s / "videomme")
    zip_dir(s / "videos_chunked_01.zip", src / "videomme" / "data", src / "videomme")  # data/<id>.mp4
    s = snaps["mlvu_dev"]
    (s / "mlvu").mkdir(parents=True)
    shutil.copy(src / "mlvu" / "test-00000-of-00001.parquet", s / "mlvu")
    zip_dir(s / "video_part_1.zip", src / "mlvu", src / "mlvu")
    s = snaps["longvideobench_val_v"]
    s.mkdir(parents=True)
    lvb = src / "datasets" / "longvideobench"
    shutil.copy(lvb / "validation-00000-of-00001.parquet", s)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(lvb / "videos", arcname="videos")
    blob = buf.getvalue()
    (s / "videos.tar.part.aa").write_bytes(blob[: len(blob) // 2])
    (s / "videos.tar.part.ab").write_bytes(blob[len(blob) // 2:])
    s = snaps["mvbench"]
    shutil.copytree(src / "mvbench_video", s, ignore=shutil.ignore_patterns("data0613"))
    zip_dir(tmp_path / "main" / "video" / "data0613.zip", src / "mvbench_video" / "data0613", src / "mvbench_video")

    by_repo = {b.hub_repo: snaps[k] for k, b in prepare.BENCHMARKS.items()}
    calls = []

    def fake_snapshot(repo, revision, data_root, patterns, workers):
        calls.append((repo, revision, patterns))
        return by_repo[repo]

    monkeypatch.setattr(prepare, "_snapshot", fake_snapshot)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, filename, **kw: str(tmp_path / "main" / filename))
    root = tmp_path / "hf_home"
    for key in prepare.BENCHMARKS:
        prepare.download(key, root, delete_archives=False)
    assert [(r, v) for r, v, _ in calls] == [("lmms-eval/Video-MME", "main"), ("sy1998/MLVU_dev", "main"),
                                             ("longvideobench/LongVideoBench", "main"), ("OpenGVLab/MVBench", "video")]
    assert (root / "mvbench_video" / "json").is_symlink()
    assert (root / "mvbench_video" / "data0613" / "clevrer" / "video_validation" / "moving_count_0.mp4").is_file()
    report = prepare.verify(list(prepare.BENCHMARKS), root, workers=2)
    assert {k: (r["expected"], r["present"]) for k, r in report.items()} == {
        "videomme": (2, 2), "mlvu_dev": (4, 4), "longvideobench_val_v": (4, 4), "mvbench": (40, 40)}
    assert prepare.print_report(report, out=io.StringIO())
    for key in prepare.BENCHMARKS:  # a second run (resume) changes nothing
        prepare.download(key, root)
    from tango.tasks import write_local_tasks

    assert Path(write_local_tasks(root, tmp_path / "tasks")).joinpath("mvbench_local.yaml").is_file()
