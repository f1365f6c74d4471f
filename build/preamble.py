"""shiv preamble of daemon.pyz: runs after extraction, before the CLI starts.

shiv extracts the pyz's packages once per build into $SHIV_ROOT/<pyz name>_<build id> (default
~/.shiv). Every update leaves another such directory behind, so this prunes them: it keeps the
current one and the most recently used other one (the version a rollback returns to, so that a
rollback does not extract again) and removes the rest. It also tells the daemon which file it
was started from ($SHIV_PYZ). It never stops the daemon: any error here is ignored.
"""

import os
import shutil
import sys
import time
from pathlib import Path

KEEP_OTHERS = 1
STALE_TMP_S = 3600  # an interrupted extraction (<dir>.tmp) older than this is abandoned


def prune(current: Path) -> None:
    root = current.parent
    prefix = current.name.rsplit("_", 1)[0] + "_"
    os.utime(current)  # "most recently used" is what decides which other one stays
    others = []
    for entry in root.iterdir():
        if entry == current or not entry.name.startswith(prefix) or not entry.is_dir():
            continue
        if entry.name.endswith(".tmp"):
            if time.time() - entry.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        others.append((entry.stat().st_mtime, entry))
    others.sort(reverse=True)
    for _, old in others[KEEP_OTHERS:]:
        shutil.rmtree(old, ignore_errors=True)
        (root / f".{old.name}_lock").unlink(missing_ok=True)


def forget_builtin_hashlib() -> None:
    """__main__.py (build/mainpy.py) hid _hashlib from shiv's bootstrap so that OpenSSL's libcrypto
    stays unloaded: drop that hashlib, and the daemon's first `import hashlib` loads the real one."""
    if "_hashlib" in sys.modules and sys.modules["_hashlib"] is None:
        del sys.modules["_hashlib"]
        sys.modules.pop("hashlib", None)


def main() -> None:
    forget_builtin_hashlib()
    os.environ["SHIV_PYZ"] = os.path.abspath(archive)  # noqa: F821 - set by shiv's bootstrap
    try:
        prune(Path(site_packages).parent)  # noqa: F821 - set by shiv's bootstrap
    except OSError:
        pass


if __name__ == "__main__":
    main()
