#!/usr/bin/env bash
# Build dist/daemon.pyz reproducibly: the same sources and the same venv give the same bytes.
#
#   PYTHON=.venv/bin/python build/shiv.sh        (what `make pyz` runs)
#
# - Packages: daemon_app plus the closure of pyproject's runtime dependencies, copied exactly as
#   installed in $PYTHON's environment (build/stage.py): pinned to the tested versions, offline,
#   no dev tools (pytest, ruff, shiv, grpcio-tools).
# - Reproducible: files sorted, modes normalised, every timestamp set to SOURCE_DATE_EPOCH
#   (default: the time of the last git commit), a build id that is a hash of the contents.
# - The build id is written into the pyz as daemon_app/_build.json (`daemon.pyz version` prints it)
#   and names the extraction directory: $SHIV_ROOT/daemon.pyz_<build id> (SHIV_ROOT defaults
#   to ~/.shiv). build/preamble.py prunes older extractions at start, keeping the previous one.
# - Runs with any python3.11 that has none of the dependencies: `python3 dist/daemon.pyz --help`.
# - Options (environment): OUT=path (default dist/daemon.pyz); DAEMON_VERSION=V stamps V as the
#   version of the build (the sources are untouched); DAEMON_INJECT=file.py appends test code to
#   daemon_app/__init__.py (test builds only: a daemon that crashes or never registers).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-dist/daemon.pyz}"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || echo 315532800)"
fi
export SOURCE_DATE_EPOCH

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
build_id="$("$PYTHON" build/stage.py "$stage/site-packages" --version "${DAEMON_VERSION:-}" \
    --inject "${DAEMON_INJECT:-}")"

mkdir -p "$(dirname "$OUT")"
"$PYTHON" -m shiv --reproducible --compressed --compile-pyc \
    --python "/usr/bin/env python3" \
    --entry-point daemon_app.cli:main \
    --preamble build/preamble.py \
    --site-packages "$stage/site-packages" \
    --build-id "$build_id" \
    --output-file "$OUT.tmp" | { grep -v "overridden the default build-id" || true; }
"$PYTHON" build/mainpy.py "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
echo "built $OUT: build $build_id, $(du -h "$OUT" | cut -f1), sha256 $(sha256sum "$OUT" | cut -c1-16)"
