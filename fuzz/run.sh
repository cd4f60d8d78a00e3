#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), from a clean clone:
#   bash fuzz/run.sh 120            # all targets, 2 minutes each
#   bash fuzz/run.sh 30 path head   # some targets
# Installs cargo-fuzz and a nightly toolchain when missing. New inputs that
# add coverage land in fuzz/corpus/<target>/, which is then minimised
# (cargo fuzz cmin, then at most its 300 smallest inputs) so the corpus kept
# in the repository stays small; a
# crash stops the run with its input in fuzz/artifacts/<target>/.
# gateway/tests/fuzz_corpus.rs replays the corpus on stable Rust (CI).
# FUZZ_SANITIZER=address turns AddressSanitizer on (default: none, faster;
# the crates forbid unsafe code).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
all=(path mailbox senders keys head config admin_body)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
san="${FUZZ_SANITIZER:-none}"
for t in "${targets[@]}"; do
  log="$(mktemp)"
  echo "== $t: ${secs}s" >&2
  if ! cargo +nightly fuzz run -s "$san" "$t" "corpus/$t" -- \
      -max_total_time="$secs" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz/run.sh: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^Done [0-9]+ runs|stat::number_of_executed_units' "$log" | head -2 >&2
  cargo +nightly fuzz cmin -s "$san" "$t" "corpus/$t" >/dev/null 2>&1 || true
  # Keep the repository's corpus small: the 300 smallest inputs of the
  # minimised set.
  (cd "corpus/$t" && ls -S | head -n -300 | xargs -r rm -f)
  echo "   corpus: $(ls "corpus/$t" | wc -l) files" >&2
  rm -f "$log"
done
