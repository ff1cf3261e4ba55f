"""Seeds in one place, and what every summary records about how it was made."""
from __future__ import annotations

import platform
import random
import subprocess
from importlib import metadata

import numpy as np
import torch

PACKAGES = ("torch", "transformers", "tokenizers", "peft", "bitsandbytes", "numpy", "pandas",
            "scipy", "statsmodels", "pillow", "pydicom", "papermill")


def seed_everything(seed: int) -> None:
    """The only place the project seeds random, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the working tree, with `-dirty` when it has uncommitted changes."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def provenance(seed: int) -> dict:
    return {"seed": seed, "packages": package_versions(), "git_commit": git_commit(),
            "machine": machine()}
