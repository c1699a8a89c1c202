#!/usr/bin/env bash
# Builds the device library as it ships (profile `ffi`) for aarch64-linux-android and fails if
# the stripped libtessera_ffi.so is over the size budget.
#   scripts/ffi-size.sh [--budget BYTES] [--profile NAME] [--ios]
#
# --ios also builds the aarch64-apple-ios staticlib with the same profile and prints its size
# (no budget: Xcode's linker keeps only what the app reaches).
#
# Without the Android NDK: ring's C code is compiled by Debian's clang for the target
# (freestanding, as scripts/cross-check.sh does) and the library is linked by the toolchain's own
# rust-lld against empty stand-ins for the NDK's libc, libdl, libm, liblog and libunwind. A shared
# library may leave those symbols undefined (the phone's loader resolves them), so the stand-ins
# only satisfy the linker's -l flags; the NDK's crtbegin_so/crtend_so (a few hundred bytes) are
# missing. The size is therefore the real NDK build's within a few KB. The shipped library is
# built with the NDK (`cargo ndk`, see docs/android.md) from the same profile.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=3145728 # 3 MiB
profile=ffi
ios=0
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --ios) ios=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_INCREMENTAL=0

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
rustup target add aarch64-linux-android >/dev/null

stubs="$target_dir/android-link-stubs"
mkdir -p "$stubs"
for lib in c dl m log unwind; do
  [ -f "$stubs/lib$lib.a" ] || llvm-ar rc "$stubs/lib$lib.a"
done
sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
lld="$sysroot/lib/rustlib/$host/bin/rust-lld"

start=$(date +%s)
CARGO_TARGET_AARCH64_LINUX_ANDROID_LINKER="$lld" \
CARGO_TARGET_AARCH64_LINUX_ANDROID_RUSTFLAGS="-C linker-flavor=ld.lld -L native=$stubs" \
CC_aarch64_linux_android=clang \
CFLAGS_aarch64_linux_android="--target=aarch64-linux-android28 -ffreestanding -DRING_CORE_NOSTDLIBINC=1" \
AR_aarch64_linux_android=llvm-ar \
  cargo rustc --locked --profile "$profile" -p tessera-bindings --lib \
    --target aarch64-linux-android --crate-type cdylib
echo "build time: $(( $(date +%s) - start )) s"

dir="$profile"
[ "$profile" = "dev" ] && dir=debug
so="$target_dir/aarch64-linux-android/$dir/libtessera_ffi.so"
size=$(stat -c %s "$so")
echo "libtessera_ffi.so (aarch64-linux-android, profile $profile): $size bytes (budget $budget)"
if [ "$size" -gt "$budget" ]; then
  echo "the Android library is over its size budget: see docs/benchmarks.md (\"Library size\")" >&2
  exit 1
fi

if [ "$ios" = "1" ]; then
  rustup target add aarch64-apple-ios >/dev/null
  shim="$target_dir/cross-include/apple"
  mkdir -p "$shim"
  # The iOS SDK's TargetConditionals.h, as scripts/cross-check.sh writes it.
  cat > "$shim/TargetConditionals.h" <<'H'
#pragma once
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 0
#define TARGET_OS_IPHONE 1
#define TARGET_OS_IOS 1
#define TARGET_OS_TV 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_SIMULATOR 0
H
  SDKROOT="$shim" IPHONEOS_DEPLOYMENT_TARGET=13.0 \
  CC_aarch64_apple_ios=clang \
  CFLAGS_aarch64_apple_ios="-isystem $shim -ffreestanding -DRING_CORE_NOSTDLIBINC=1" \
  AR_aarch64_apple_ios=llvm-ar \
    cargo rustc --locked --profile "$profile" -p tessera-bindings --lib --target aarch64-apple-ios \
      --crate-type staticlib
  echo "libtessera_ffi.a (aarch64-apple-ios, profile $profile): $(stat -c %s "$target_dir/aarch64-apple-ios/$dir/libtessera_ffi.a") bytes"
fi
