#!/usr/bin/env bash
# The binding tests: the generated Python module and the Kotlin wrapper (on the JVM, through JNA)
# drive every flow against a real tessera-server process on loopback.
#
#   bindings/tests/run.sh [python|kotlin|all] [--bench]
#
# --bench also measures one FFI round trip (a trivial synchronous call) from each language.
# TESSERA_BINDINGS_RELEASE=1 tests a release build of the library (as the benchmarks do).
#
# Installs what is missing: Python 3, a JRE (Debian's default-jre-headless), JNA (libjna-java),
# Node.js and npm (for the kotlin-compiler package, pinned in android/jvm-tests/package-lock.json). Prints
# "bindings-python: N passed, N failed" and "bindings-kotlin: N passed, N failed".
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
which="${1:-all}"
bench=""
if [ "${2:-}" = "--bench" ] || [ "${1:-}" = "--bench" ]; then bench="--bench"; fi
if [ "$which" = "--bench" ]; then which=all; fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"
generated="$root/bindings/generated"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

echo "== bindings: building tessera-server and generating the bindings"
cargo build --locked -q -p tessera-server
if [ "${TESSERA_BINDINGS_RELEASE:-0}" = "1" ]; then
  ./bindings/generate.sh --release "$generated" >/dev/null
else
  ./bindings/generate.sh "$generated" >/dev/null
fi
export TESSERA_SERVER_BIN="$target_dir/debug/tessera-server"

# HTTPS for the devices: a throwaway test CA and a certificate for localhost, served by a
# TLS-terminating proxy each harness puts in front of the server (the server's --public-url is
# the proxy's https://localhost:PORT). The SDK verifies it with the platform verifier
# (rustls-platform-verifier), which on Linux reads the trusted roots from SSL_CERT_FILE: only
# the test CA is trusted. untrusted.p12 is a self-signed certificate a test expects refused.
tls="$target_dir/bindings-tls"
command -v openssl >/dev/null 2>&1 || apt_install openssl
mkdir -p "$tls"
(
  cd "$tls"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  san="subjectAltName=DNS:localhost,IP:127.0.0.1"
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=Tessera test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
  printf '%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext \
    -out server.pem 2>/dev/null
  openssl pkcs12 -export -inkey server.key -in server.pem -certfile ca.pem -out server.p12 -passout pass:tessera
  openssl req -x509 "${ec[@]}" -keyout untrusted.key -out untrusted.pem -days 2 -subj "/CN=localhost" \
    -addext "$san" 2>/dev/null
  openssl pkcs12 -export -inkey untrusted.key -in untrusted.pem -out untrusted.p12 -passout pass:tessera
)
export TESSERA_TEST_TLS_DIR="$tls" SSL_CERT_FILE="$tls/ca.pem"

status=0
if [ "$which" = "all" ] || [ "$which" = "python" ]; then
  echo "== bindings: Python"
  command -v python3 >/dev/null 2>&1 || apt_install python3
  TESSERA_PYTHON_BINDINGS="$generated/python" python3 bindings/tests/python/test_flows.py $bench || status=1
fi

if [ "$which" = "all" ] || [ "$which" = "kotlin" ]; then
  echo "== bindings: Kotlin on the JVM"
  missing=""
  command -v java >/dev/null 2>&1 || missing="default-jre-headless"
  [ -f /usr/share/java/jna.jar ] || missing="$missing libjna-java"
  command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
  if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    apt_install $missing
  fi
  tests="$root/android/jvm-tests"
  kotlin="$tests/node_modules/kotlin-compiler"
  if [ ! -x "$kotlin/bin/kotlinc" ]; then
    (cd "$tests" && npm ci --no-audit --no-fund >/dev/null)
  fi
  build="$target_dir/jvm-tests"
  mkdir -p "$build"
  classpath="/usr/share/java/jna.jar:$kotlin/lib/kotlinx-coroutines-core-jvm.jar"
  start=$(date +%s)
  "$kotlin/bin/kotlinc" -nowarn -cp "$classpath" -d "$build/tests.jar" \
    "$generated/kotlin/dev/tessera/ffi/tessera.kt" \
    android/tessera/src/main/kotlin/dev/tessera/android/Tessera.kt \
    android/tessera/src/main/kotlin/dev/tessera/android/Jca.kt \
    android/tessera/src/main/kotlin/dev/tessera/android/SignalRules.kt \
    "$tests"/src/*.kt
  echo "kotlin compile time: $(( $(date +%s) - start )) s"
  java -Djna.library.path="$generated/lib" \
    -cp "$build/tests.jar:$classpath:$kotlin/lib/kotlin-stdlib.jar" \
    dev.tessera.jvmtests.FlowsTestKt $bench || status=1
fi
exit "$status"
