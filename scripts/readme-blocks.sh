#!/usr/bin/env bash
# Runs the README's command blocks marked to run: each ```sh block preceded by the line
# `<!-- ci:run -->`, in the order they appear, in one bash session (`set -euo pipefail`, so a
# failing command fails the run), in a fresh temporary folder, against the server the first
# block starts. Blocks that need what CI cannot give (a release build, a phone, a mail server)
# are simply not marked.
#
# What is adapted, and only this: the debug build stands in for the release build
# (`cargo build --release` → `cargo build`, `./target/release/` → the debug folder; the code is
# the same), `cargo run -p tessera-examples --bin tessera-device --` runs the built binary (the
# folder is not the workspace), and port 8080 becomes a free port. The server started in the
# background is stopped at the end. Prints "readme-blocks: N passed, N failed" (one per block).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
script="$work/readme.sh"

python3 - "$root/README.md" "$script" "$root" "$port" <<'PY'
import re
import shlex
import sys

readme, out, root, port = sys.argv[1:]
text = open(readme, encoding="utf-8").read()
blocks = re.findall(r"<!-- ci:run -->\s*\n```sh\n(.*?)```", text, flags=re.S)
if not blocks:
    sys.exit("no block of README.md is marked <!-- ci:run -->")
device = shlex.quote(f"{root}/target/debug/tessera-device")
with open(out, "w", encoding="utf-8") as f:
    f.write("set -euo pipefail\n")
    for i, block in enumerate(blocks, 1):
        block = block.replace("cargo build --release", f"cargo build --manifest-path {shlex.quote(root)}/Cargo.toml")
        block = block.replace("./target/release/", f"{shlex.quote(root)}/target/debug/")
        block = re.sub(r"cargo run (-q )?-p tessera-examples --bin tessera-device --", device, block)
        block = block.replace("8080", port)
        f.write(f"echo '== readme block {i} of {len(blocks)}'\n{block}\n")
        # A newline first: curl's answers end without one.
        f.write(f"printf '\\nreadme block {i} ok\\n'\n")
print(f"readme-blocks: {len(blocks)} blocks marked to run", file=sys.stderr)
PY

total=$(grep -c "^echo '== readme block" "$script")
cleanup() {
  rm -rf "$work"
}
trap cleanup EXIT
status=0
(
  cd "$work"
  # The block shell stops what its blocks started in the background (the server) when it ends.
  exec bash -c "trap 'kill \$(jobs -p) 2>/dev/null || true' EXIT; source '$script'"
) 2>&1 | tee "$work/out.log" || status=$?
ok=$(grep -c "^readme block [0-9]* ok$" "$work/out.log" || true)
echo "readme-blocks: $ok passed, $((total - ok)) failed"
exit "$status"
