"""The pyz build id: written into the zipapp by build/shiv.sh; 'dev' when running from source."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def build_info() -> dict[str, Any]:
    """daemon_app/_build.json as build/stage.py wrote it (build id, versions, pinned dependencies);
    {} when running from a source tree."""
    try:
        from importlib.resources import files

        return dict(json.loads(files("daemon_app").joinpath("_build.json").read_text()))
    except (FileNotFoundError, ModuleNotFoundError, ValueError, OSError):
        return {}


def build_id() -> str:
    return str(build_info().get("build_id", "dev"))


def pyz_path() -> str | None:
    """The daemon.pyz we were started from, when we run inside one (build/preamble.py sets
    $SHIV_PYZ; the file name test is the fallback for a pyz built without that preamble)."""
    path = os.environ.get("SHIV_PYZ") or (sys.argv[0] if sys.argv and sys.argv[0].endswith(".pyz") else "")
    return os.path.abspath(path) if path else None
