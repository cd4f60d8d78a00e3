#!/usr/bin/env bash
# The proxy benchmark: one command, every scenario side by side in one run.
#
#   bash benches/proxy.sh [--quick] [--duration SECS] [--threads N] [--keys N] [--ab ROUNDS]
#                         [--fast-path true|false]
#
# --fast-path false runs every scopegate scenario with `[connections]
# fast_path = false` (every request through Pingora's proxy), to compare.
#
# On 127.0.0.1, free ports, the same wrk settings (-t2 -c64 --latency) and the
# same duration for each scenario:
#   1. the upstream directly (the ceiling): `scopegate mock-upstream --quiet
#      --fixed-response`, which answers every request with the same small body,
#      so the upstream does the same work behind every proxy (its default echo
#      grows with the identity headers an enforcing gateway adds)
#   2. nginx proxy_pass to that upstream, upstream keepalive on
#   3. scopegate --bench-passthrough domains (plain Pingora, no check, same build)
#   4. scopegate enforcing, 1M keys, a random key per request, GET /domains/{domain} in scope
#   5. scopegate refusing invalid keys (malformed and unknown; never reaches the upstream)
#   6. scopegate on POST /email with a ~1 KiB JSON body whose From is in scope
#   7. benches/lean-h1: not scopegate — the smallest HTTP/1.1 keep-alive
#      proxy loop on one current-thread tokio runtime with a per-thread
#      upstream connection stack (no check, no timeouts; an experiment that
#      bounds what a lean proxy path costs beside nginx and Pingora)
# Scenarios 1-4 use the same wrk script (benches/wrk/random_key.lua), so the
# client does the same work in each. nginx and scopegate get the same number
# of worker threads (--threads, default 1).
#
# Then the A/B: a pass-through and an enforcing gateway run side by side on the
# same store, and wrk alternates between them ROUNDS times (default 4, 8 s
# each; --ab 0 skips it); medians of requests/s and CPU per request. On a
# noisy VM this is the figure to quote for enforcing / pass-through.
#
# Per scenario, besides requests/s and latency: the proxy's CPU time, system
# calls and context switches per request, counted by `perf stat -p` on the
# proxy's processes during the measured run (linux-perf is installed when
# missing; where the kernel refuses the events the columns say n/a and why).
#
# Installs wrk and nginx from Debian packages when missing, builds the release
# binary, stops everything it started on exit, prints a table and writes it to
# target/bench-proxy.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash benches/proxy.sh $*"
DURATION=15
THREADS=1
KEYS=1000000
WRK_THREADS=2
WRK_CONNECTIONS=64
WARMUP=1
AB_ROUNDS=4
AB_SECS=8
FAST_PATH=true

usage() {
    sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) DURATION=3; shift ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --threads) THREADS=${2:?--threads needs a number}; shift 2 ;;
        --keys) KEYS=${2:?--keys needs a number}; shift 2 ;;
        --ab) AB_ROUNDS=${2:?--ab needs a number of rounds}; shift 2 ;;
        --fast-path) FAST_PATH=${2:?--fast-path needs true or false}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "proxy.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { printf 'proxy.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- tools
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
NGINX=$(command -v nginx || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v perf >/dev/null || missing+=(linux-perf)
[[ -n $NGINX ]] || missing+=(nginx)
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]} (Debian packages)"
    # RUNLEVEL=1: do not start the packaged nginx service on port 80.
    install() {
        $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
            apt-get install -y --no-install-recommends "${missing[@]}"
    }
    install || { $SUDO apt-get update && install; } || die "could not install ${missing[*]}"
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
[[ -x $NGINX ]] || die "nginx not found after installing it"
# Debian's /usr/bin/perf looks for a binary named after the running kernel;
# on another kernel (a VM's) use the newest packaged one.
PERF=$(command -v perf || true)
if [[ -n $PERF ]] && ! "$PERF" --version >/dev/null 2>&1; then
    PERF=$(ls /usr/bin/perf_* 2>/dev/null | sort -V | tail -1 || true)
fi
PERF_EVENTS=raw_syscalls:sys_enter,task-clock,context-switches
PERF_PROBLEM=""
if [[ -z $PERF ]]; then
    PERF_PROBLEM="perf is not available"
elif ! PERF_ERR=$($SUDO "$PERF" stat -x, -e "$PERF_EVENTS" -- true 2>&1 >/dev/null) \
    || grep -qi "not supported\|permission\|no access\|unknown" <<<"$PERF_ERR"; then
    PERF_PROBLEM="the kernel refused perf's events ($PERF_EVENTS): $(echo "$PERF_ERR" | head -1)"
fi
[[ -z $PERF_PROBLEM ]] || log "per-request counters: n/a ($PERF_PROBLEM)"

# ---------------------------------------------------------------- build
log "cargo build --release -p scopegate-gateway"
(cd "$ROOT" && cargo build --release -p scopegate-gateway)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/scopegate
[[ -x $BIN ]] || die "$BIN missing after the build"

# ---------------------------------------------------------------- processes
TMP=$(mktemp -d "${TMPDIR:-/tmp}/scopegate-bench.XXXXXX")
chmod 755 "$TMP"
PIDS=()

stop_pid() {
    local pid=$1 sig=${2:-INT}
    kill -"$sig" "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # Forget it, so that cleanup never signals a reused pid.
    local kept=() p
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid" TERM; done 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED_PORTS=" "
# Ports below the kernel's ephemeral range: a port in that range can be the
# source port of some connection (wrk's, the proxy's to its upstream) at the
# moment a server binds it, and the bind fails.
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
(( EPHEMERAL_LOW > 12000 )) || die "the ephemeral port range starts at $EPHEMERAL_LOW: no room for the bench's ports below it"
# free_port VAR: a loopback port nobody listens on, not handed out before.
free_port() {
    local p
    while :; do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
}

# wait_port PORT PID LOG SECS: until PORT accepts, or fail with the log.
wait_port() {
    local port=$1 pid=$2 logf=$3 secs=$4 i
    for ((i = 0; i < secs * 20; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; die "process $pid exited"; }
        sleep 0.05
    done
    cat "$logf" >&2
    die "nothing listens on $port after ${secs}s"
}

# status PORT METHOD PATH [KEY] [BODY]: the status code of one request.
status() {
    local port=$1 method=$2 path=$3 key=${4:-} body=${5:-}
    local req="$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    [[ -n $key ]] && req+="Authorization: Bearer $key\r\n"
    [[ -n $body ]] && req+="Content-Type: application/json\r\nContent-Length: ${#body}\r\n"
    req+="\r\n$body"
    timeout 10 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "%b" "$2" >&3; IFS= read -r line <&3; echo "$line"' \
        _ "$port" "$req" | awk '{print $2}'
}

expect_status() {
    local want=$1 what=$2 got
    shift 2
    got=$(status "$@" || true)
    [[ $got == "$want" ]] || die "$what: expected $want, got '${got}'"
}

random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
SCOPEGATE_PEPPER=$(random_hex)
SCOPEGATE_ADMIN_TOKEN=$(random_hex)
export SCOPEGATE_PEPPER SCOPEGATE_ADMIN_TOKEN

# ---------------------------------------------------------------- results
NAMES=() RPS=() P50=() P99=() TOTAL=() NON2XX=() ERRS=() PROXY_CPU=() UP_CPU=()
SYSCALLS=() CSWITCH=() PERF_CPU=()
CLK_TCK=$(getconf CLK_TCK)
PROXY_PIDS=()

# cpu_ticks PID...: user + system CPU ticks used so far by these processes.
cpu_ticks() {
    local t=0 p
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        t=$((t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat")))
    done
    echo "$t"
}

# us_per_request TICKS REQUESTS
us_per_request() {
    awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else printf "n/a" }'
}

to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "%s", v }'
}

# wrk_run SCRIPT URL SECS: wrk's report of a run, with latency percentiles.
# With SECS=warm-up, a run of WARMUP seconds whose report is dropped.
wrk_run() {
    if [[ $3 == warm-up ]]; then
        wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"${WARMUP}s" -s "$1" "$2" >/dev/null
    else
        wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"${3}s" --latency -s "$1" "$2"
    fi
}

# From a wrk report: requests/s, total requests, a latency percentile in ms.
wrk_rps() { echo "$1" | awk '/^Requests\/sec:/ {printf "%.0f", $2}'; }
wrk_total() { echo "$1" | awk '/requests in/ {print $1}'; }
wrk_ms() { to_ms "$(echo "$1" | awk -v p="$2" '$1 == p {print $2}')"; }

# bench NAME PORT SCRIPT PATH: a warm-up, then the measured wrk run; the
# CPU time the proxy (PROXY_PIDS) and the upstream used during it.
bench() {
    local name=$1 port=$2 script=$3 path=$4 out p0 u0 p1 u1 total
    log "$name"
    wrk_run "$script" "http://127.0.0.1:$port$path" warm-up
    local perf_pid="" perf_out=$TMP/perf-${#NAMES[@]}.csv
    if [[ -z $PERF_PROBLEM && ${#PROXY_PIDS[@]} -gt 0 ]]; then
        $SUDO "$PERF" stat -x, -e "$PERF_EVENTS" -o "$perf_out" \
            -p "$(IFS=,; echo "${PROXY_PIDS[*]}")" >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.2 # attached before the measured run starts
    fi
    p0=$(cpu_ticks "${PROXY_PIDS[@]}")
    u0=$(cpu_ticks "$UP_PID")
    out=$(wrk_run "$script" "http://127.0.0.1:$port$path" "$DURATION")
    p1=$(cpu_ticks "${PROXY_PIDS[@]}")
    u1=$(cpu_ticks "$UP_PID")
    if [[ -n $perf_pid ]]; then
        $SUDO kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
    fi
    echo "$out" | sed 's/^/    /' >&2
    total=$(wrk_total "$out")
    if [[ ${#PROXY_PIDS[@]} -gt 0 ]]; then
        PROXY_CPU+=("$(us_per_request $((p1 - p0)) "$total")")
    else
        PROXY_CPU+=("-")
    fi
    UP_CPU+=("$(us_per_request $((u1 - u0)) "$total")")
    NAMES+=("$name")
    RPS+=("$(wrk_rps "$out")")
    P50+=("$(wrk_ms "$out" 50%)")
    P99+=("$(wrk_ms "$out" 99%)")
    TOTAL+=("$total")
    NON2XX+=("$(echo "$out" | awk '/Non-2xx or 3xx responses:/ {print $NF}' | grep . || echo 0)")
    ERRS+=("$(echo "$out" | awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' | grep . || echo 0)")
    if [[ -n $perf_pid && -s $perf_out ]]; then
        # CSV: value,unit,event,... (task-clock in msec). The counters include
        # the 0.2 s before the run and its tail: idle time, no requests.
        SYSCALLS+=("$(awk -F, -v n="$total" '$3 ~ /raw_syscalls/ && n > 0 {printf "%.2f", $1 / n}' "$perf_out")")
        CSWITCH+=("$(awk -F, -v n="$total" '$3 == "context-switches" && n > 0 {printf "%.2f", $1 / n}' "$perf_out")")
        PERF_CPU+=("$(awk -F, -v n="$total" '$3 == "task-clock" && n > 0 {printf "%.1f", $1 * 1000 / n}' "$perf_out")")
    else
        SYSCALLS+=("n/a") CSWITCH+=("n/a") PERF_CPU+=("n/a")
    fi
}

export KEYS_FILE=$TMP/keys.txt
WRK_DIR=$ROOT/benches/wrk

# ---------------------------------------------------------------- upstream
free_port UP
"$BIN" mock-upstream --listen "127.0.0.1:$UP" --name upstream --quiet --fixed-response >"$TMP/mock.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_port "$UP" "$UP_PID" "$TMP/mock.log" 10

# ---------------------------------------------------------------- population
log "population: $KEYS keys (scopegate loadtest --populate-only)"
"$BIN" loadtest --populate-only --keys "$KEYS" --store "$TMP/pop.db" --export-secrets "$KEYS_FILE"
FIRST_KEY=$(awk 'NR == 1 {print $1}' "$KEYS_FILE")
FIRST_DOMAIN=$(awk 'NR == 1 {print $2}' "$KEYS_FILE")
RW_KEY=$(awk '$3 == "rw" {print $1; exit}' "$KEYS_FILE")
RW_DOMAIN=$(awk '$3 == "rw" {print $2; exit}' "$KEYS_FILE")

cat >"$TMP/scopegate.toml" <<EOF
grace_period_ms = 1000
[log]
access_log = "off"
[upstreams.sending]
backends = ["127.0.0.1:$UP"]
[upstreams.domains]
backends = ["127.0.0.1:$UP"]
[connections]
fast_path = $FAST_PATH
EOF

# start_scopegate VAR_PID PORT ADMIN [extra args]
start_scopegate() {
    local __pid=$1 port=$2 admin=$3
    shift 3
    "$BIN" serve --config "$TMP/scopegate.toml" --store "$TMP/pop.db" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --threads "$THREADS" "$@" >"$TMP/scopegate-$port.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$port" "$pid" "$TMP/scopegate-$port.log" 300
    wait_port "$admin" "$pid" "$TMP/scopegate-$port.log" 60
    expect_status 200 "scopegate /readyz" "$admin" GET /readyz
    printf -v "$__pid" '%s' "$pid"
}

# ---------------------------------------------------------------- 1. upstream
expect_status 200 "upstream" "$UP" GET "/domains/$FIRST_DOMAIN"
bench "1. upstream directly (ceiling)" "$UP" "$WRK_DIR/random_key.lua" /

# ---------------------------------------------------------------- 2. nginx
free_port NGX
mkdir -p "$TMP/nginx"
USER_LINE=""
[[ $(id -u) -eq 0 ]] && USER_LINE="user root root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
$USER_LINE
worker_processes $THREADS;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    upstream backend {
        server 127.0.0.1:$UP;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$NGX;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"$NGINX" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGX" "$NGINX_PID" "$TMP/nginx/error.log" 10
expect_status 200 "nginx" "$NGX" GET "/domains/$FIRST_DOMAIN"
mapfile -t PROXY_PIDS < <(echo "$NGINX_PID"; pgrep -P "$NGINX_PID")
bench "2. nginx proxy_pass (keepalive)" "$NGX" "$WRK_DIR/random_key.lua" /
stop_pid "$NGINX_PID" TERM

# ---------------------------------------------------------------- 3. passthrough
free_port GW
free_port ADM
start_scopegate PASS_PID "$GW" "$ADM" --bench-passthrough domains
expect_status 200 "passthrough" "$GW" GET "/domains/$FIRST_DOMAIN"
PROXY_PIDS=("$PASS_PID")
bench "3. scopegate passthrough (no check)" "$GW" "$WRK_DIR/random_key.lua" /
stop_pid "$PASS_PID" INT

# ---------------------------------------------------------------- 4-6. enforcing
free_port GW
free_port ADM
start_scopegate GATE_PID "$GW" "$ADM"
expect_status 200 "a valid key" "$GW" GET "/domains/$FIRST_DOMAIN" "$FIRST_KEY"
expect_status 401 "a malformed key" "$GW" GET "/domains/$FIRST_DOMAIN" "sg_not-a-key"
SEND_BODY="{\"From\":\"sender@$RW_DOMAIN\",\"To\":\"someone@elsewhere.example\",\"Subject\":\"probe\",\"TextBody\":\"hi\"}"
expect_status 201 "a send" "$GW" POST /email "$RW_KEY" "$SEND_BODY"
KEY_COUNT=$(wc -l <"$KEYS_FILE" | tr -d ' ')
PROXY_PIDS=("$GATE_PID")
bench "4. scopegate enforcing, $KEY_COUNT keys" "$GW" "$WRK_DIR/random_key.lua" /
bench "5. scopegate refusing invalid keys" "$GW" "$WRK_DIR/invalid_key.lua" /
bench "6. scopegate POST /email, 1 KiB" "$GW" "$WRK_DIR/send.lua" /
stop_pid "$GATE_PID" INT

# ---------------------------------------------------------------- 7. lean-h1
log "cargo build --release (benches/lean-h1, its own workspace)"
(cd "$ROOT/benches/lean-h1" && CARGO_TARGET_DIR=$TARGET/lean-h1 cargo build --release --quiet)
free_port LEAN
"$TARGET/lean-h1/release/lean-h1" "127.0.0.1:$LEAN" "127.0.0.1:$UP" >"$TMP/lean.log" 2>&1 &
LEAN_PID=$!
PIDS+=("$LEAN_PID")
wait_port "$LEAN" "$LEAN_PID" "$TMP/lean.log" 10
expect_status 200 "lean-h1" "$LEAN" GET "/domains/$FIRST_DOMAIN"
PROXY_PIDS=("$LEAN_PID")
bench "7. lean-h1 tokio loop (experiment, no check)" "$LEAN" "$WRK_DIR/random_key.lua" /
stop_pid "$LEAN_PID" INT

# ---------------------------------------------------------------- A/B
AB_REPORT=""
if [[ $AB_ROUNDS -gt 0 ]]; then
    free_port GWP; free_port ADMP; free_port GWE; free_port ADME
    start_scopegate AB_PASS "$GWP" "$ADMP" --bench-passthrough domains
    start_scopegate AB_GATE "$GWE" "$ADME"
    expect_status 200 "a valid key (A/B)" "$GWE" GET "/domains/$FIRST_DOMAIN" "$FIRST_KEY"
    AB_LINES=()
    # ab_run MODE PID PORT: one wrk run; appends "MODE rps cpu_us p99_ms" to AB_LINES.
    ab_run() {
        local mode=$1 pid=$2 port=$3 out c0 c1
        wrk_run "$WRK_DIR/random_key.lua" "http://127.0.0.1:$port/" warm-up
        c0=$(cpu_ticks "$pid")
        out=$(wrk_run "$WRK_DIR/random_key.lua" "http://127.0.0.1:$port/" "$AB_SECS")
        c1=$(cpu_ticks "$pid")
        echo "$out" | grep -q "Non-2xx" && die "A/B $mode: non-2xx answers"
        AB_LINES+=("$mode $(wrk_rps "$out") $(us_per_request $((c1 - c0)) "$(wrk_total "$out")") $(wrk_ms "$out" 99%)")
        log "A/B $mode: ${AB_LINES[-1]}"
    }
    for ((r = 1; r <= AB_ROUNDS; r++)); do
        ab_run passthrough "$AB_PASS" "$GWP"
        ab_run enforcing "$AB_GATE" "$GWE"
    done
    stop_pid "$AB_PASS" INT
    stop_pid "$AB_GATE" INT
    AB_REPORT=$(printf '%s\n' "${AB_LINES[@]}" | awk -v rounds="$AB_ROUNDS" -v secs="$AB_SECS" '
        function median(a, n,   i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        { n[$1]++; rps[$1, n[$1]] = $2; cpu[$1, n[$1]] = $3; p99[$1, n[$1]] = $4 }
        END {
            for (m in n) {
                for (i = 1; i <= n[m]; i++) { a[i] = rps[m, i] }; R[m] = median(a, n[m])
                for (i = 1; i <= n[m]; i++) { a[i] = cpu[m, i] }; C[m] = median(a, n[m])
                for (i = 1; i <= n[m]; i++) { a[i] = p99[m, i] }; P[m] = median(a, n[m])
            }
            printf "A/B, %d alternating rounds of %d s, both gateways running on the same store:\n\n", rounds, secs
            print "| gateway | median requests/s | median proxy CPU µs/req | median p99 ms |"
            print "|---|---:|---:|---:|"
            printf "| pass-through | %.0f | %.1f | %.3f |\n", R["passthrough"], C["passthrough"], P["passthrough"]
            printf "| enforcing | %.0f | %.1f | %.3f |\n", R["enforcing"], C["enforcing"], P["enforcing"]
            printf "\n| A/B ratio | value |\n|---|---:|\n"
            printf "| enforcing / pass-through, requests/s | %.2f |\n", R["enforcing"] / R["passthrough"]
            printf "| enforcing / pass-through, CPU per request | %.2f |\n", C["enforcing"] / C["passthrough"]
            printf "| CPU per request added by enforcement | %.1f µs |\n", C["enforcing"] - C["passthrough"]
        }')
fi

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

NOTES=("" "" "" "" "" "" "")
[[ ${NON2XX[3]} == 0 ]] || NOTES[3]="!! valid keys refused"
[[ ${NON2XX[4]} == "${TOTAL[4]}" ]] || NOTES[4]="!! some invalid keys admitted"
[[ ${NON2XX[5]} == 0 ]] || NOTES[5]="!! sends refused"
NOTES[4]="${NOTES[4]:-all refused (401), as expected}"

CPU=$(lscpu 2>/dev/null | awk -F: '/^Model name/ {gsub(/^ +/, "", $2); print $2; exit}')
REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$ROOT" && git status --porcelain 2>/dev/null | grep -q . && echo " (uncommitted changes)" || true)

REPORT=$(
    echo "# scopegate proxy benchmark"
    echo
    echo "- command: \`$COMMAND\`"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); scopegate $REV$DIRTY"
    echo "- machine: $(nproc) CPUs, ${CPU:-unknown CPU}; $(uname -sr)"
    echo "- load: wrk $WRK_THREADS threads, $WRK_CONNECTIONS connections, ${DURATION}s per scenario after a ${WARMUP}s warm-up, --latency; all on 127.0.0.1"
    echo "- workers: nginx worker_processes $THREADS, scopegate --threads $THREADS (the same for both); upstream: scopegate mock-upstream --fixed-response (hyper, 2 tokio workers; the same small answer to every request), answering directly at the rate of row 1"
    echo "- scenarios 1-4 use the same wrk script (a random key of $KEY_COUNT per request, GET /domains/{domain} in scope), so the client does the same work in each"
    echo "- with $(nproc) cores, wrk, the proxy and the upstream all compete for the same CPUs: requests/s are for comparing rows, not absolute capacity; the CPU columns are per request and do not depend on that sharing"
    echo
    echo "| scenario | requests/s | p50 ms | p99 ms | proxy CPU µs/req | proxy CPU µs/req (perf) | syscalls/req | context switches/req | upstream CPU µs/req | requests | non-2xx | socket errors | note |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for i in "${!NAMES[@]}"; do
        echo "| ${NAMES[$i]} | ${RPS[$i]} | ${P50[$i]} | ${P99[$i]} | ${PROXY_CPU[$i]} | ${PERF_CPU[$i]} | ${SYSCALLS[$i]} | ${CSWITCH[$i]} | ${UP_CPU[$i]} | ${TOTAL[$i]} | ${NON2XX[$i]} | ${ERRS[$i]} | ${NOTES[$i]} |"
    done
    echo
    echo "| ratio (requests/s) | value |"
    echo "|---|---:|"
    echo "| enforcing $KEY_COUNT keys / passthrough | $(ratio "${RPS[3]}" "${RPS[2]}") |"
    echo "| enforcing $KEY_COUNT keys / nginx | $(ratio "${RPS[3]}" "${RPS[1]}") |"
    echo "| passthrough / nginx | $(ratio "${RPS[2]}" "${RPS[1]}") |"
    echo "| refusals / passthrough | $(ratio "${RPS[4]}" "${RPS[2]}") |"
    echo "| send (POST 1 KiB) / passthrough (GET) | $(ratio "${RPS[5]}" "${RPS[2]}") |"
    echo "| p99 enforcing - p99 passthrough (ms) | $(awk -v a="${P99[3]}" -v b="${P99[2]}" 'BEGIN {printf "%.3f", a - b}') |"
    echo "| proxy CPU per request: enforcing / passthrough | $(ratio "${PROXY_CPU[3]}" "${PROXY_CPU[2]}") |"
    echo "| proxy CPU per request: enforcing / nginx | $(ratio "${PROXY_CPU[3]}" "${PROXY_CPU[1]}") |"
    echo "| proxy CPU per request: passthrough / nginx | $(ratio "${PROXY_CPU[2]}" "${PROXY_CPU[1]}") |"
    echo "| syscalls per request: enforcing / nginx | $(ratio "${SYSCALLS[3]}" "${SYSCALLS[1]}") |"
    echo "| context switches per request: enforcing / nginx | $(ratio "${CSWITCH[3]}" "${CSWITCH[1]}") |"
    echo "| proxy CPU per request: lean-h1 loop / nginx | $(ratio "${PROXY_CPU[6]}" "${PROXY_CPU[1]}") |"
    echo "| proxy CPU per request: passthrough / lean-h1 loop | $(ratio "${PROXY_CPU[2]}" "${PROXY_CPU[6]}") |"
    echo
    echo "CPU µs/req: user + system CPU time of the process (nginx: master and workers) during the measured run, from /proc, divided by the requests wrk completed. It is what one request costs the proxy, independent of how the 2 cores were shared."
    if [[ -n $PERF_PROBLEM ]]; then
        echo "Per-request counters: n/a — $PERF_PROBLEM."
    else
        echo "perf columns: \`perf stat -e $PERF_EVENTS -p <proxy pids>\` around the measured run (attached 0.2 s before it), divided by the requests wrk completed."
    fi
    if [[ -n $AB_REPORT ]]; then
        echo
        echo "$AB_REPORT"
    fi
)
mkdir -p "$TARGET"
echo "$REPORT" >"$TARGET/bench-proxy.md"
echo
echo "$REPORT"
echo
echo "(written to $TARGET/bench-proxy.md)"
