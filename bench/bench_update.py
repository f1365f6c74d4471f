"""Benchmark: an Agent update of a 50 MB package over loopback mutual-TLS HTTPS.

Prints the time split into download, verify (size + SHA-256) and swap (backup + atomic swap), then
the whole Updater.run end to end. Last stdout line: JSON figures. `--quick` uses 10 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon_app.update import download, install  # noqa: E402
from daemon_app.update.flow import Updater, UpdateRequest  # noqa: E402
from daemon_app.update.manifest import Manifest  # noqa: E402
from tests.update_support import (  # noqa: E402
    PackageServer,
    TestPKI,
    new_ed25519,
    public_pem,
    update_config,
    write_release,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size_mb, rounds = (10, 2) if args.quick else (50, 3)
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        work = Path(tmp)
        pki = TestPKI(work / "pki")
        key = new_ed25519()
        (work / "keys").mkdir()
        (work / "keys" / "update.pub").write_bytes(public_pem(key))
        (work / "bin").mkdir()
        agent = work / "bin" / "agent"
        agent.write_bytes(os.urandom(size_mb * 1024 * 1024))
        os.chmod(agent, 0o755)
        cfg = update_config(work, pki, download_deadline="5m", read_timeout="30s")
        package = os.urandom(size_mb * 1024 * 1024)
        server = PackageServer(pki, package)
        tls = cfg.manager.tls
        settings = download.DownloadSettings(tls.ca_file, tls.cert_file, tls.key_file, 5.0, 30.0, 300.0)
        splits: dict[str, list[float]] = {"download": [], "verify": [], "swap": [], "total": []}
        updater = Updater(cfg)
        try:
            for n in range(rounds):
                rel = write_release(work / f"rel{n}", key, "agent", f"2.0.{n}", package)
                manifest = Manifest.parse((rel / "manifest.json").read_bytes())
                t0 = time.perf_counter()
                path = download.fetch(server.url("/pkg"), cfg.update.download_dir, len(package), settings,
                                      lambda _: None)
                t1 = time.perf_counter()
                updater.check_package(path, manifest)
                t2 = time.perf_counter()
                install.backup(str(agent), cfg.update.backup_dir, "agent", "bench")
                install.swap(path, str(agent))
                t3 = time.perf_counter()
                os.unlink(path)
                splits["download"].append(t1 - t0)
                splits["verify"].append(t2 - t1)
                splits["swap"].append(t3 - t2)
                request = UpdateRequest.from_dir("agent", str(rel), url=server.url("/pkg"))
                t4 = time.perf_counter()
                result = updater.run(request)
                splits["total"].append(time.perf_counter() - t4)
                if not result.success:
                    raise SystemExit(f"update failed: {result.error}")
                print(f"round {n}: download {t1 - t0:.3f}s verify {t2 - t1:.3f}s swap {t3 - t2:.3f}s "
                      f"end-to-end {splits['total'][-1]:.3f}s", file=sys.stderr)
        finally:
            server.close()
    figures = {f"update_{k}_s": round(statistics.median(v), 3) for k, v in splits.items()}
    figures["update_package_mb"] = size_mb
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
