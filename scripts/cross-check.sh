#!/usr/bin/env bash
# Cross checks of the bindings for the mobile targets on a Linux machine without the Android NDK
# or Xcode, so that nothing Linux-only slips into the mobile builds:
#   - cargo check of tessera-bindings for aarch64-linux-android;
#   - a staticlib build of tessera-bindings for aarch64-apple-ios.
#   scripts/cross-check.sh [--release]
#
# The only C in the dependency tree is ring's. It is compiled with Debian's clang for the target
# triple, freestanding (ring's RING_CORE_NOSTDLIBINC: clang's own stdint.h and stddef.h, no libc
# headers), plus a TargetConditionals.h stand-in for the iOS target in place of the iOS SDK's.
# That compiles and type-checks everything for the target; the libraries that ship are built with
# the real NDK (android/, cargo ndk) and Xcode (ios/build-xcframework.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
release=()
if [ "${1:-}" = "--release" ]; then profile=release; release=(--release); fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=""
command -v clang >/dev/null 2>&1 || missing="clang"
command -v llvm-ar >/dev/null 2>&1 || missing="$missing llvm"
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
rustup target add aarch64-linux-android aarch64-apple-ios >/dev/null

freestanding="-ffreestanding -DRING_CORE_NOSTDLIBINC=1"
shim="$target_dir/cross-include/apple"
mkdir -p "$shim"
cat > "$shim/TargetConditionals.h" <<'H'
/* Stand-in for the iOS SDK's TargetConditionals.h, for the cross check only. */
#pragma once
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 0
#define TARGET_OS_IPHONE 1
#define TARGET_OS_IOS 1
#define TARGET_OS_TV 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_SIMULATOR 0
H

echo "== cargo check of tessera-bindings for aarch64-linux-android"
CC_aarch64_linux_android=clang \
CFLAGS_aarch64_linux_android="--target=aarch64-linux-android28 $freestanding" \
AR_aarch64_linux_android=llvm-ar \
  cargo check --locked "${release[@]}" -p tessera-bindings --target aarch64-linux-android

echo "== staticlib build of tessera-bindings for aarch64-apple-ios"
SDKROOT="$shim" IPHONEOS_DEPLOYMENT_TARGET=13.0 \
CC_aarch64_apple_ios=clang \
CFLAGS_aarch64_apple_ios="-isystem $shim $freestanding" \
AR_aarch64_apple_ios=llvm-ar \
  cargo rustc --locked "${release[@]}" -p tessera-bindings --lib --target aarch64-apple-ios --crate-type staticlib
ls -l "$target_dir/aarch64-apple-ios/$profile/libtessera_ffi.a"
