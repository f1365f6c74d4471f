#!/usr/bin/env bash
# Build the pyz of one architecture reproducibly: the same sources and lock give the same bytes.
#
#   PYTHON=.venv/bin/python ARCH=aarch64 build/shiv.sh     (`make pyz` runs it for each architecture)
#
# - Runs on CPython 3.9 to 3.13 on ARCH (default: this machine's): daemon_app plus the closure of
#   pyproject's runtime dependencies, as the wheels locked in build/pyz-lock.json for every one of
#   those interpreters (build/wheels.py fetches them, build/stage.py unpacks them: abi3 and pure
#   Python once, per-interpreter builds once per interpreter); no dev tools (pytest, ruff, shiv).
# - Reproducible: files sorted, modes normalised, every timestamp set to SOURCE_DATE_EPOCH
#   (default: the time of the last git commit), a build id that is a hash of the contents.
# - The build id is written into the pyz as daemon_app/_build.json (`daemon.pyz version` prints it)
#   and names the extraction directory: $SHIV_ROOT/daemon.pyz_<build id> (SHIV_ROOT defaults
#   to ~/.shiv). build/preamble.py prunes older extractions at start, keeping the previous one.
# - Runs with the host's python3, which needs none of the dependencies: `python3 daemon.pyz --help`;
#   another interpreter or architecture gets one line saying what the file needs (build/mainpy.py).
# - Options (environment): ARCH=x86_64|aarch64; OUT=path (default dist/daemon-$ARCH.pyz);
#   DAEMON_VERSION=V stamps V as the
#   version of the build (the sources are untouched); DAEMON_INJECT=file.py appends test code to
#   daemon_app/__init__.py (test builds only: a daemon that crashes or never registers).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
ARCH="${ARCH:-$(uname -m)}"
OUT="${OUT:-dist/daemon-$ARCH.pyz}"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || echo 315532800)"
fi
export SOURCE_DATE_EPOCH

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
build_id="$("$PYTHON" build/stage.py "$stage/site-packages" --arch "$ARCH" --version "${DAEMON_VERSION:-}" \
    --inject "${DAEMON_INJECT:-}")"

mkdir -p "$(dirname "$OUT")"
"$PYTHON" -m shiv --reproducible --compressed --compile-pyc \
    --python "/usr/bin/env python3" \
    --entry-point daemon_app.cli:main \
    --preamble build/preamble.py \
    --site-packages "$stage/site-packages" \
    --build-id "$build_id" \
    --output-file "$OUT.tmp" | { grep -v "overridden the default build-id" || true; }
"$PYTHON" build/mainpy.py "$OUT.tmp" "$stage/_interp"
mv -f "$OUT.tmp" "$OUT"
echo "built $OUT: build $build_id, $(du -h "$OUT" | cut -f1), sha256 $(sha256sum "$OUT" | cut -c1-16)"
