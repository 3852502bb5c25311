#!/usr/bin/env bash
# Cross-check against bob.measure (farfrr, far_threshold, eer_threshold). bob.measure 6.1.1 pins
# numpy ~=1.26, which the project (numpy 2) cannot share, so it runs in a venv of its own.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
venv="$root/build/bob-venv"
out="$root/build/bob-check"
mkdir -p "$out"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet bob.measure
"$venv/bin/python" "$here/bob_side.py" "$out"
PYTHONPATH="$here/.." "$root/.venv/bin/python" "$here/faceaudit_side.py" "$out"
