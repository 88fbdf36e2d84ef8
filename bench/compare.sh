#!/usr/bin/env bash
# Side-by-side benchmark: rdla (release build, CPU backend) vs TransformerLens 2.18 (float32,
# CPU, torch threads = cores) on generated GPT-2-small-shaped and TinyStories-1M-shaped
# checkpoints, in one run on one machine. See docs/PERFORMANCE.md.
#
#   bench/compare.sh [WORK_DIR] [extra bench/compare.py options, e.g. --reps 3]
#
# Environment: CARGO_TARGET_DIR (default: ./target), VENV (default: tests/fixtures/.venv;
# created from tests/fixtures/requirements.txt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-/tmp/rdla-bench}
[ $# -gt 0 ] && shift
VENV=${VENV:-$ROOT/tests/fixtures/.venv}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

if [ ! -x /usr/bin/time ]; then
    echo "installing GNU time (for peak RSS)" >&2
    apt-get install -y time >/dev/null || sudo apt-get install -y time >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV from tests/fixtures/requirements.txt" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -r tests/fixtures/requirements.txt
fi

cargo build --release -p rdla
RDLA=$TARGET/release/rdla

echo "work dir: $WORK" >&2
"$VENV/bin/python" bench/compare.py --rdla "$RDLA" --work "$WORK" "$@"
echo "full results: $WORK/results.json, table: $WORK/results.md" >&2
