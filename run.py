"""Entry point: `python run.py [model=...] [method=...] [budget=...] [task=...]`. See README.md."""

import hydra
from omegaconf import DictConfig

import tango.config  # noqa: F401  (registers the config schemas and the run_key resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from tango.runner import run

    return run(cfg)


if __name__ == "__main__":
    main()
