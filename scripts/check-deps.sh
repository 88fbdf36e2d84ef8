#!/usr/bin/env bash
# Architecture guards run by CI:
#  - the compute core (rdla-model, rdla-attrib, rdla-render, rdla-session) must not depend on GUI crates;
#  - Cargo.lock must hold exactly one wgpu (burn 0.22 and eframe 0.37 share wgpu 30).
# A failure of the tools themselves (cargo tree, a missing Cargo.lock) is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in rdla-model rdla-attrib rdla-render rdla-session; do
  if ! tree=$(cargo tree -p "$crate" -e normal,build --prefix none --offline 2>&1); then
    echo "check-deps: \`cargo tree -p $crate\` failed:" >&2
    echo "$tree" >&2
    exit 2
  fi
  if [ -z "$tree" ]; then
    echo "check-deps: \`cargo tree -p $crate\` printed nothing" >&2
    exit 2
  fi
  leaks=$(printf '%s\n' "$tree" | awk '{print $1}' \
    | grep -E '^(egui|eframe|egui-winit|egui-wgpu|egui_plot|winit|rfd)$' | sort -u || true)
  if [ -n "$leaks" ]; then
    echo "check-deps: GUI crates in $crate's dependency tree: $leaks" >&2
    status=1
  fi
done
[ -f Cargo.lock ] || { echo "check-deps: no Cargo.lock" >&2; exit 2; }
n=$(grep -c '^name = "wgpu"$' Cargo.lock || true)
if [ "$n" != "1" ]; then
  echo "check-deps: Cargo.lock holds $n versions of wgpu (expected exactly 1):" >&2
  grep -A1 '^name = "wgpu"$' Cargo.lock >&2 || true
  status=1
fi
[ $status -eq 0 ] && echo "check-deps: core is GUI-free; one wgpu ($(grep -A1 '^name = "wgpu"$' Cargo.lock | sed -n 's/version = //p'))"
exit $status
