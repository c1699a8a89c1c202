#!/usr/bin/env bash
# Builds TesseraFFIC.xcframework (the Rust library for iOS devices, the simulators and macOS, with
# its C header and module map) and generates Sources/TesseraFFI/TesseraFFI.swift. Needs macOS
# with Xcode and a Rust toolchain; adds the Rust targets it needs.
#   ios/build-xcframework.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
export IPHONEOS_DEPLOYMENT_TARGET=15.0 MACOSX_DEPLOYMENT_TARGET=12.0

targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"
cd "$root"
for target in "${targets[@]}"; do
  cargo rustc --locked --release -p tessera-bindings --lib --target "$target" --crate-type staticlib
done

# The Swift code and C header, generated from a host (debug) build: the same for every target.
generated="$target_dir/swift-bindings"
./bindings/generate.sh "$generated"
cp "$generated/swift/TesseraFFI.swift" "$here/Sources/TesseraFFI/TesseraFFI.swift"
headers="$target_dir/xcframework-headers"
rm -rf "$headers" && mkdir -p "$headers"
cp "$generated/swift/TesseraFFIC.h" "$headers/"
cp "$generated/swift/TesseraFFIC.modulemap" "$headers/module.modulemap"

# One library per platform: the simulators' and the Macs' architectures joined with lipo.
lib() { echo "$target_dir/$1/release/libtessera_ffi.a"; }
fat="$target_dir/xcframework-libs"
rm -rf "$fat" && mkdir -p "$fat/ios-sim" "$fat/macos"
lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" -output "$fat/ios-sim/libtessera_ffi.a"
lipo -create "$(lib aarch64-apple-darwin)" "$(lib x86_64-apple-darwin)" -output "$fat/macos/libtessera_ffi.a"

rm -rf "$here/TesseraFFIC.xcframework"
xcodebuild -create-xcframework \
  -library "$(lib aarch64-apple-ios)" -headers "$headers" \
  -library "$fat/ios-sim/libtessera_ffi.a" -headers "$headers" \
  -library "$fat/macos/libtessera_ffi.a" -headers "$headers" \
  -output "$here/TesseraFFIC.xcframework"
echo "built $here/TesseraFFIC.xcframework; now: swift build (macOS) or add the package in Xcode"
