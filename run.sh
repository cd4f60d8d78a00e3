#!/usr/bin/env bash
# One entry point for a fresh machine: installs what the build needs, then
#   bash run.sh demo   - the gateway enforcing keys in front of a real mock upstream
#   bash run.sh test   - every test (the command CI runs)
#   bash run.sh bench  - criterion benches of the hot path
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# The PostgreSQL tests start throwaway clusters with Debian's server binaries
# (/usr/lib/postgresql/<version>/bin) unless SCOPEGATE_TEST_DATABASE_URL names
# a server to use instead.
if [ "${1:-}" = test ] && [ -z "${SCOPEGATE_TEST_DATABASE_URL:-}" ] \
  && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  need_apt+=(postgresql)
fi
# tests/postmark_clients.rs runs Postmark's official Node.js client (npm) and
# the Python client postmarker (PyPI, into a venv it makes).
if [ "${1:-}" = test ]; then
  command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
  command -v npm >/dev/null 2>&1 || need_apt+=(npm)
  command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  echo "run.sh: installing ${need_apt[*]} (needed to build Pingora, and to test against PostgreSQL and Postmark's clients)" >&2
  $sudo apt-get install -y "${need_apt[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y "${need_apt[@]}"; }
fi

cmd="${1:-}"
shift || true
case "$cmd" in
  demo) exec cargo run --release --quiet -p scopegate-gateway --bin scopegate -- demo "$@" ;;
  test) exec cargo test --workspace "$@" ;;
  bench) exec cargo bench -p scopegate-suite "$@" ;;
  *) echo "usage: bash run.sh demo|test|bench" >&2; exit 2 ;;
esac
