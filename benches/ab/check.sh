#!/usr/bin/env bash
# Interleaved A/B of the whole 1M-key check: REV's keystore (old) against the
# working tree's (new), in one process (benches/ab/check.rs). Builds under
# target/ab-check; REV defaults to HEAD~1.
#   bash benches/ab/check.sh 1402c25            # N=1000000 ROUNDS=40 BLOCK=200000
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rev=${1:-HEAD~1}
dir="$root/target/ab-check"
rm -rf "$dir/old" "$dir/ab/src"
mkdir -p "$dir/old" "$dir/ab/src"

# REV's keystore as its own workspace, renamed so both can be linked.
git -C "$root" archive "$rev" keystore Cargo.toml | tar -x -C "$dir/old"
python3 - "$dir/old" <<'PY'
import re, sys
d = sys.argv[1]
ws = open(f"{d}/Cargo.toml").read()
keep = [m.group(0) for m in re.finditer(r"^\[workspace\.(package|dependencies)\][^\[]*(?:\[(?!package\]|\[)[^\[]*)*", ws, re.M)]
open(f"{d}/Cargo.toml", "w").write('[workspace]\nresolver = "2"\nmembers = ["keystore"]\n\n' + "\n".join(keep))
k = open(f"{d}/keystore/Cargo.toml").read()
k = k.replace('name = "scopegate-keystore"', 'name = "scopegate-keystore-old"', 1)
k = re.sub(r"(?m)^\[lints\]\nworkspace = true\n?", "", k)
open(f"{d}/keystore/Cargo.toml", "w").write(k)
PY

# The population helper for each side (the test suite's, with its domain list inlined).
python3 - "$root" "$dir/ab/src" <<'PY'
import re, sys
root, out = sys.argv[1], sys.argv[2]
import os
src = f"{root}/gateway/src/tools/loadtest/population.rs"
if not os.path.exists(src):  # before the gateway's folders (issue 13)
    src = f"{root}/gateway/src/loadtest.rs"
domains = re.search(r"pub const DOMAINS: \[&str; \d+\] = \[.*?\];",
                    open(src).read(), re.S).group(0)
pop = open(f"{root}/tests/support/population.rs").read()
pop = pop.replace("pub use scopegate_gateway::loadtest::DOMAINS;", domains)
for side, crate in (("new", "scopegate_keystore"), ("old", "scopegate_keystore_old")):
    open(f"{out}/population_{side}.rs", "w").write(pop.replace("scopegate_keystore", crate))
PY
cp "$root/benches/ab/check.rs" "$dir/ab/src/main.rs"
cp "$root/Cargo.lock" "$dir/ab/Cargo.lock"
cat > "$dir/ab/Cargo.toml" <<TOML
[package]
name = "ab-check"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
scopegate-keystore = { path = "$root/keystore" }
scopegate-keystore-old = { path = "$dir/old/keystore" }
mimalloc = { version = "0.1", default-features = false }

[profile.release]
debug = 1
TOML
cargo build --release --quiet --manifest-path "$dir/ab/Cargo.toml"
echo "old = $rev ($(git -C "$root" rev-parse --short "$rev")), new = working tree of $(git -C "$root" rev-parse --short HEAD)"
"$dir/ab/target/release/ab-check"
