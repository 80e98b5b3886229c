"""The environment is the lock: installed distributions, declared imports, and what every record says about both."""
from __future__ import annotations

import ast
import hashlib
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tango import environment

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.locked_env
def test_installed_distributions_are_the_locked_ones():
    """`make test` runs in .venv as `uv sync --locked` left it: nothing extra, nothing at another version."""
    assert environment.lock_diff() == []
    status = environment.lock_status()
    assert status["env_matches_lock"] is True and status["env_lock_diff"] is None
    assert status["lock_sha256"] == hashlib.sha256((ROOT / "uv.lock").read_bytes()).hexdigest()


def _fake_lock(tmp_path: Path, packages: str) -> Path:
    path = tmp_path / "uv.lock"
    path.write_text('version = 1\nrequires-python = ">=3.11"\n' + packages)
    return path


@pytest.mark.unit
def test_locked_versions_pick_the_fork_for_this_python(tmp_path):
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    lock = _fake_lock(tmp_path, f"""
[[package]]
name = "NumPy"
version = "1.0.0"
resolution-markers = ["python_full_version < '{here}'"]

[[package]]
name = "numpy"
version = "2.0.0"
resolution-markers = ["python_full_version >= '{here}'"]

[[package]]
name = "typing_extensions"
version = "4.0.0"
""")
    assert environment.locked_versions(lock) == {"numpy": "2.0.0", "typing-extensions": "4.0.0"}


@pytest.mark.unit
def test_lock_diff_names_extra_and_wrong_versions(tmp_path):
    installed = environment.installed_versions()
    pinned = {n: v for n, v in installed.items() if n not in ("pytest", "torch")}
    body = "".join(f'\n[[package]]\nname = "{n}"\nversion = "{v}"\n' for n, v in pinned.items())
    lock = _fake_lock(tmp_path, body + '\n[[package]]\nname = "torch"\nversion = "0.0.1"\n')
    diff = environment.lock_diff(lock)
    assert diff == [f"pytest=={installed['pytest']} is installed but not in the lock",
                    f"torch=={installed['torch']} is installed, the lock has 0.0.1"]
    assert environment._main(["--diff", str(lock)]) == 1


def _top_level_imports(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def _distributions(modules: set[str]) -> set[str]:
    """Distribution names (normalised) providing these third-party top-level modules."""
    local = ({"tango"} | {p.stem for p in (ROOT / "tests").rglob("*") if p.is_dir() or p.suffix == ".py"}
             | {p.stem for p in (ROOT / "scripts").glob("*.py")})  # scripts import their siblings (upstream.py)
    mapping = metadata.packages_distributions()
    dists = set()
    for mod in sorted(modules - set(sys.stdlib_module_names) - local):
        assert mod in mapping, f"imported module {mod!r} comes from no installed distribution"
        dists |= {environment._norm(d) for d in mapping[mod]}
    return dists


def _declared(*groups: list[str]) -> set[str]:
    return {environment._norm(Requirement(r).name) for g in groups for r in g}


@pytest.mark.unit
def test_everything_the_code_imports_is_declared():
    """No direct import may arrive only transitively: a lock refresh could otherwise drop it silently."""
    deps = PYPROJECT["project"]["dependencies"]
    dev = PYPROJECT["dependency-groups"]["dev"]
    code = [ROOT / "run.py", *(ROOT / "tango").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    undeclared = _distributions(_top_level_imports(code)) - _declared(deps)
    assert not undeclared, f"the harness imports {sorted(undeclared)}, which pyproject.toml's dependencies omit"
    tests = list((ROOT / "tests").rglob("*.py"))
    undeclared = _distributions(_top_level_imports(tests)) - _declared(deps, dev)
    assert not undeclared, f"the tests import {sorted(undeclared)}, which neither dependencies nor the dev group declare"


@pytest.mark.unit
def test_lock_covers_the_declared_pythons_and_platform():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    assert lock["requires-python"] == ">=3.11, <3.13" == PYPROJECT["project"]["requires-python"].replace(",", ", ")
    assert lock["supported-markers"] == ["platform_machine == 'x86_64' and sys_platform == 'linux'"]
    assert lock["options"]["exclude-newer"].startswith(PYPROJECT["tool"]["uv"]["exclude-newer"].rstrip("Z")[:19])
    versions = {p["name"]: p["version"] for p in lock["package"]}
    assert versions["filelock"].split(".")[0] == "3"  # lmms-eval 0.7.3 imports filelock._api (gone in 4)
    assert versions["transformers"] == "5.23.0" and versions["lmms-eval"] == "0.7.3" and versions["wandb"] == "0.25.0"
    assert not [n for n, v in versions.items() if Version(v).is_prerelease], "the lock holds stable releases only"
    unhashed = [f"{p['name']}=={p['version']}" for p in lock["package"]
                if "editable" not in p["source"] and not all("hash" in f for f in p.get("wheels", []) + [p.get("sdist", {"hash": 1})])]
    assert not unhashed, f"lock entries without a hash: {unhashed}"
