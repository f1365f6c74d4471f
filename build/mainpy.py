"""Replace shiv's __main__.py in a built pyz with one that keeps OpenSSL's libcrypto out of the daemon.

Usage: python build/mainpy.py PYZ   (build/shiv.sh runs it on the freshly built file)

shiv's bootstrap imports hashlib at its top (for an optional source-hash check this pyz does not
use), and hashlib loads OpenSSL's libcrypto through _hashlib: ~3.6 MB of resident memory for the
daemon's whole life, although nothing on its idle path hashes anything (grpc carries its own TLS
library). The new __main__.py hides _hashlib while the bootstrap imports, so that hashlib falls back
to Python's built-in hashes there; build/preamble.py then forgets both modules before the daemon
starts, so the daemon's own `import hashlib` (an update's SHA-256) gets OpenSSL's again.
Entries, their order, dates and modes are kept: the output is as reproducible as shiv's.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

MAIN_PY = b"""\
# -*- coding: utf-8 -*-
# Written by build/mainpy.py: the bootstrap's hashlib must not load OpenSSL (see build/preamble.py).
import sys
sys.modules["_hashlib"] = None
import _bootstrap
_bootstrap.bootstrap()
"""


def rewrite(pyz: Path) -> None:
    raw = pyz.read_bytes()
    shebang = raw[:raw.index(b"\n") + 1]
    if not shebang.startswith(b"#!"):
        sys.exit(f"build: {pyz} does not start with a shebang line")
    tmp = pyz.with_name(pyz.name + ".main")
    with zipfile.ZipFile(pyz) as src, open(tmp, "wb") as fh:
        fh.write(shebang)
        with zipfile.ZipFile(fh, "w") as dst:
            found = False
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "__main__.py":
                    if b"import _bootstrap" not in data:
                        sys.exit(f"build: unexpected __main__.py in {pyz}: {data!r}")
                    data, found = MAIN_PY, True
                dst.writestr(info, data)
            if not found:
                sys.exit(f"build: {pyz} has no __main__.py")
    os.chmod(tmp, os.stat(pyz).st_mode)
    os.replace(tmp, pyz)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rewrite(Path(sys.argv[1]))
