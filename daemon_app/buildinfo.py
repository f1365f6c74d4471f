"""The pyz build id: written into the zipapp by build/shiv.sh; 'dev' when running from source."""

from __future__ import annotations

import json
import os
import sys


def build_id() -> str:
    env = os.environ.get("SHIV_BUILD_ID")
    if env:
        return env
    try:
        from importlib.resources import files

        data = files("daemon_app").joinpath("_build.json").read_text()
        return str(json.loads(data)["build_id"])
    except (FileNotFoundError, ModuleNotFoundError, KeyError, ValueError, OSError):
        return "dev"


def pyz_path() -> str | None:
    """The daemon.pyz we were started from, when we run inside one."""
    path = os.environ.get("SHIV_PYZ") or (sys.argv[0] if sys.argv and sys.argv[0].endswith(".pyz") else "")
    return os.path.abspath(path) if path else None
