"""Entry point: `python run.py [model=...] [method=...] [budget=...] [task=...]`. See README.md."""

import os
import sys

import hydra
from omegaconf import DictConfig

import tango.config  # noqa: F401  (registers the config schemas and the run_key resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from tango.runner import run

    try:
        return run(cfg)
    except tango.config.ConfigError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"[tango] error: {e}\n(set HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
