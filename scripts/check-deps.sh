#!/usr/bin/env bash
# Architecture guards run by CI:
#  - the compute core (rdla-model, rdla-attrib) must not depend on GUI crates;
#  - Cargo.lock must hold exactly one wgpu (burn 0.22 and eframe 0.37 share wgpu 30).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in rdla-model rdla-attrib; do
  leaks=$(cargo tree -p "$crate" -e normal,build --prefix none --offline 2>/dev/null \
    | awk '{print $1}' | grep -E '^(egui|eframe|egui-winit|egui-wgpu|egui_plot|winit|rfd)$' | sort -u || true)
  if [ -n "$leaks" ]; then
    echo "check-deps: GUI crates in $crate's dependency tree: $leaks" >&2
    status=1
  fi
done
n=$(grep -c '^name = "wgpu"$' Cargo.lock || true)
if [ "$n" != "1" ]; then
  echo "check-deps: Cargo.lock holds $n versions of wgpu (expected exactly 1):" >&2
  grep -A1 '^name = "wgpu"$' Cargo.lock >&2 || true
  status=1
fi
[ $status -eq 0 ] && echo "check-deps: core is GUI-free; one wgpu ($(grep -A1 '^name = "wgpu"$' Cargo.lock | sed -n 's/version = //p'))"
exit $status
