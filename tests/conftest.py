import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache (tiny checkpoints, synthetic task) shared by the tests of one session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_llava_dir(cache_dir) -> Path:
    from tango.models.base import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint("llava_ov", cache_dir / "models" / "tiny_llava_ov")


@pytest.fixture(scope="session")
def tiny_qwen_dir(cache_dir) -> Path:
    from tango.models.base import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint("qwen2_5_vl", cache_dir / "models" / "tiny_qwen2_5_vl")


@pytest.fixture()
def run_env(tmp_path, cache_dir) -> dict:
    """Environment for `python run.py` subprocesses: results, cache and W&B files inside the test's folders."""
    env = dict(os.environ)
    env.update(TANGO_RESULTS=str(tmp_path / "results"), TANGO_CACHE=str(cache_dir), WANDB_MODE="offline",
               WANDB_DIR=str(tmp_path / "wandb"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
               WANDB_DATA_DIR=str(tmp_path / "wandb-data"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_SILENT="true", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def run_cli(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
