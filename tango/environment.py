"""Which environment produced a number: the lock's hash, whether the installed distributions are exactly the locked
ones, and the versions that matter (torch, CUDA, transformers, lmms-eval, Python).

`make setup` installs `.venv` from `uv.lock` (uv's universal lock: one `[[package]]` entry per name and version, a
name with several versions carries `resolution-markers` saying which Python/platform gets which). Every run record
and benchmark row carries `lock_status()`, so a result made in a drifted or hand-patched environment says so.

    python -m tango.environment            # the fields a record gets, as JSON
    python -m tango.environment --diff     # installed distributions that are not the locked version (exit 1 if any)
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import tomllib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.version import InvalidVersion, Version

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = REPO_ROOT / "uv.lock"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def locked_versions(lock_file: Path = LOCK_FILE) -> dict[str, str]:
    """{normalised name: version} that `uv sync` installs on this interpreter and platform.

    A name locked at several versions keeps the one whose `resolution-markers` match here; a name with none matching
    (e.g. a Python-3.12-only fork on 3.11) is left out.
    """
    lock = tomllib.loads(lock_file.read_text())
    out: dict[str, str] = {}
    for pkg in lock.get("package", []):
        markers = pkg.get("resolution-markers")
        if markers and not any(Marker(m).evaluate() for m in markers):
            continue
        out[_norm(pkg["name"])] = pkg["version"]
    return out


def installed_versions() -> dict[str, str]:
    """{normalised name: version} of every distribution importable by this interpreter."""
    return {_norm(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def lock_diff(lock_file: Path = LOCK_FILE) -> list[str]:
    """Installed distributions that are not in the lock or not at the locked version, one line each."""
    locked = locked_versions(lock_file)
    diff = []
    for name, ver in sorted(installed_versions().items()):
        if name not in locked:
            diff.append(f"{name}=={ver} is installed but not in the lock")
        elif not _same_version(ver, locked[name]):
            diff.append(f"{name}=={ver} is installed, the lock has {locked[name]}")
    return diff


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def lock_status() -> dict:
    """The environment fields of every record: lock hash, exactness, and the versions that matter.

    `env_matches_lock` is None when there is no `uv.lock` beside the package (an installed wheel, not a checkout).
    """
    import torch

    v = installed_versions()
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "transformers": v.get("transformers"), "lmms_eval": v.get("lmms-eval"),
           "lock_sha256": None, "env_matches_lock": None, "env_lock_diff": None}
    if LOCK_FILE.is_file():
        diff = lock_diff()
        out.update(lock_sha256=_sha256(LOCK_FILE), env_matches_lock=not diff, env_lock_diff="; ".join(diff) or None)
    return out


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "--diff":
        lock = Path(argv[1]) if len(argv) > 1 else LOCK_FILE
        diff = lock_diff(lock)
        print("\n".join(diff) if diff else f"every installed distribution is the version {lock} locks")
        return 1 if diff else 0
    if argv:
        print(f"unknown arguments {argv}; usage: python -m tango.environment [--diff [LOCK]]", file=sys.stderr)
        return 2
    print(json.dumps(lock_status(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
