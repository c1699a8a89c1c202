#!/usr/bin/env bash
# Builds the bindings library for this machine and generates its Kotlin, Swift and Python code
# with the workspace's pinned uniffi-bindgen.
#
#   bindings/generate.sh [--release] [OUT_DIR]
#
# OUT_DIR (default bindings/generated) receives:
#   kotlin/dev/tessera/ffi/tessera.kt   (android/ and the JVM tests compile it)
#   swift/TesseraFFI.swift, swift/TesseraFFIC.h, swift/TesseraFFIC.modulemap  (ios/)
#   python/tessera.py                   (the Python tests import it)
#   lib/libtessera_ffi.so               (the host library the JVM and Python load)
# The generated code is the same for every target: the mobile builds (android/, ios/) build the
# library for their own targets and reuse it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
profile=debug
cargo_profile=()
if [ "${1:-}" = "--release" ]; then
  profile=release
  cargo_profile=(--release)
  shift
fi
out="${1:-$root/bindings/generated}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

cd "$root"
cargo build --locked "${cargo_profile[@]}" -p tessera-bindings -p tessera-uniffi-bindgen
lib="$target_dir/$profile/libtessera_ffi.so"
if [ "$(uname)" = "Darwin" ]; then lib="$target_dir/$profile/libtessera_ffi.dylib"; fi
# The interface is read from the static library: the release profile strips the shared one,
# uniffi's metadata symbols included.
metadata="$target_dir/$profile/libtessera_ffi.a"
bindgen="$target_dir/$profile/uniffi-bindgen"

rm -rf "$out"
mkdir -p "$out/lib"
for language in kotlin swift python; do
  # bindings/uniffi.toml configures the generated code; bindgen.toml says where it is.
  "$bindgen" generate "$metadata" --language "$language" \
    --config "$root/bindings/bindgen.toml" --out-dir "$out/$language" --no-format
done
cp "$lib" "$out/lib/"
# The generated Python module loads the library from its own folder.
cp "$lib" "$out/python/"
echo "bindings generated in $out"
