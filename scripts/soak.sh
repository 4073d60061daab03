#!/usr/bin/env bash
# soak.sh: kill -9 the server under HTTP load, cycle after cycle, and check after every
# restart that every order it acknowledged is still there. Not run in CI: with the defaults
# a cycle acknowledges about a thousand orders and each restart reads the whole log back, so
# a cycle takes 5 s at first and more as the log grows: 1,000 cycles take hours (fewer
# WORKERS or a shorter RUN_MS_MAX keep the log smaller).
#
# Usage: scripts/soak.sh [CYCLES]            (CYCLES defaults to 1000)
#
# Needs curl, jq and awk. Settings, from the environment:
#   EMPORIUM    the binary (default: target/release/emporium; `cargo build --release` first)
#   DATA        the data directory (default: a new temporary one, removed at the end unless
#               the soak fails or KEEP=1)
#   PORT        the loopback port the server listens on (default 18080)
#   WORKERS     concurrent load workers (default 8), each one keep-alive connection
#   BATCH       orders a worker sends per connection before it opens the next (default 50)
#   RUN_MS_MIN, RUN_MS_MAX
#               how long the load runs before the kill, drawn uniformly (default 200..1500)
#
# Each cycle starts `emporium serve`, waits for /healthz, then
#   1. reads back every order acknowledged (201) in the cycle before, the one killed:
#      GET /v1/shops/main/orders/{id} must answer 200;
#   2. reads the whole log through the event feed: every order acknowledged in any cycle so
#      far must be placed in it;
#   3. runs WORKERS workers placing one-line orders (ids unique to the cycle and worker),
#      each recording the ids answered 201, and kills the server with SIGKILL after a random
#      time; a worker stops at the first request that gets no answer.
# After the last cycle the server is started once more for the checks, stopped with SIGTERM,
# and `emporium verify` must pass (chain intact, the log reaching its witness).
#
# The first missing order stops the soak (exit 1), naming it and keeping the data directory.
# At the end it prints the figures: cycles, orders acknowledged, missing, wall time.

set -euo pipefail

CYCLES=${1:-1000}
EMPORIUM=${EMPORIUM:-target/release/emporium}
PORT=${PORT:-18080}
WORKERS=${WORKERS:-8}
BATCH=${BATCH:-50}
RUN_MS_MIN=${RUN_MS_MIN:-200}
RUN_MS_MAX=${RUN_MS_MAX:-1500}
KEEP=${KEEP:-0}

for tool in curl jq awk; do
    command -v "$tool" >/dev/null || { echo "soak: needs $tool" >&2; exit 2; }
done
if [[ ! -x $EMPORIUM ]]; then
    echo "soak: no binary at $EMPORIUM (cargo build --release, or set EMPORIUM)" >&2
    exit 2
fi
if [[ -z ${DATA:-} ]]; then
    DATA=$(mktemp -d "${TMPDIR:-/tmp}/emporium-soak.XXXXXX")
    CREATED=1
else
    CREATED=0
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/emporium-soak-work.XXXXXX")
BASE="http://127.0.0.1:$PORT"
SHOP="$BASE/v1/shops/main"
SERVER_PID=
FAILED=0

cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    if [[ $CREATED == 1 && $KEEP != 1 && $FAILED == 0 ]]; then
        rm -rf "$DATA"
    else
        echo "soak: data kept in $DATA" >&2
    fi
}
trap cleanup EXIT

# Starts the server and waits (at most 60 s) until it answers.
start_server() {
    "$EMPORIUM" serve --data "$DATA" --listen "127.0.0.1:$PORT" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    local tries=0
    until curl -sf -o /dev/null "$BASE/healthz"; do
        tries=$((tries + 1))
        if ((tries > 600)) || ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "soak: the server did not start; its log:" >&2
            tail -n 20 "$WORK/server.log" >&2
            FAILED=1
            exit 1
        fi
        sleep 0.1
    done
}

# Sends a command and expects one of the statuses given (an idempotent retry answers the same).
send_command() {
    local path=$1 body=$2 key=$3
    shift 3
    local status
    status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$SHOP$path" \
        -H 'content-type: application/json' -H "idempotency-key: $key" -d "$body")
    for expected in "$@"; do
        [[ $status == "$expected" ]] && return 0
    done
    echo "soak: POST $path ($key) answered $status" >&2
    FAILED=1
    exit 1
}

# Worker $2 of cycle $1: places orders until a request gets no answer; appends the ids
# answered 201 to $WORK/acks/$1.$2.
worker() {
    local cycle=$1 worker=$2 n=0
    local acks="$WORK/acks/$cycle.$worker" config="$WORK/load.$worker" ids="$WORK/ids.$worker"
    while true; do
        : >"$config"
        : >"$ids"
        for ((i = 0; i < BATCH; i++)); do
            local id="c$cycle-w$worker-$n"
            n=$((n + 1))
            echo "$id" >>"$ids"
            # One transfer of curl's config: its own options after `next`.
            local body="{\\\"order_id\\\":\\\"$id\\\",\\\"customer_id\\\":\\\"C-$worker\\\",\\\"region\\\":\\\"soak\\\","
            body+="\\\"lines\\\":[{\\\"sku\\\":\\\"SOAK\\\",\\\"quantity\\\":1}]}"
            {
                echo 'next'
                echo "url = \"$SHOP/orders\""
                echo 'request = "POST"'
                echo 'header = "content-type: application/json"'
                echo "data = \"$body\""
                echo 'output = "/dev/null"'
                echo 'write-out = "%{http_code}\n"'
            } >>"$config"
        done
        local codes
        codes=$(curl -s --config "$config" || true)
        paste -d ' ' "$ids" <(printf '%s\n' "$codes") | awk '$2 == "201" { print $1 }' >>"$acks"
        # A request without an answer: the server is gone.
        if [[ $(printf '%s\n' "$codes" | grep -c -v '^[1-5][0-9][0-9]$' || true) != 0 ]]; then
            return 0
        fi
    done
}

# Every order acknowledged in cycle $1 answers GET with 200.
check_cycle() {
    local cycle=$1 config="$WORK/check" ids="$WORK/check.ids"
    cat "$WORK/acks/$cycle".* 2>/dev/null | sort -u >"$ids" || true
    [[ -s $ids ]] || return 0
    awk -v shop="$SHOP" '{
        printf "next\nurl = \"%s/orders/%s\"\n", shop, $1
        printf "output = \"/dev/null\"\nwrite-out = \"%%{http_code}\\n\"\n"
    }' "$ids" >"$config"
    local missing
    missing=$(paste -d ' ' "$ids" <(curl -s --config "$config" || true) | awk '$2 != "200" { print }')
    if [[ -n $missing ]]; then
        echo "soak: after cycle $cycle's kill, acknowledged orders do not answer 200 (id status):" >&2
        echo "$missing" | head -n 20 >&2
        MISSING=$(echo "$missing" | wc -l)
        FAILED=1
        return 1
    fi
}

# Every order acknowledged so far is placed in the log, read through the event feed.
check_log() {
    local after=0 next page
    : >"$WORK/placed"
    while true; do
        page=$(curl -sf "$SHOP/events?after=$after&limit=1000") || {
            echo "soak: the event feed failed after position $after" >&2
            FAILED=1
            return 1
        }
        printf '%s' "$page" | jq -r '.events[] | select(.type == "order_placed") | .event.order_placed.order_id' \
            >>"$WORK/placed"
        next=$(printf '%s' "$page" | jq -r '.next_after')
        [[ $next == "$after" ]] && break
        after=$next
    done
    sort -u "$WORK/placed" -o "$WORK/placed"
    cat "$WORK/acks/"* 2>/dev/null | sort -u >"$WORK/acked" || true
    ACKED=$(wc -l <"$WORK/acked")
    LOG_END=$after
    local missing
    missing=$(comm -23 "$WORK/acked" "$WORK/placed")
    if [[ -n $missing ]]; then
        MISSING=$(echo "$missing" | wc -l)
        echo "soak: $MISSING acknowledged orders are not in the log, e.g.:" >&2
        echo "$missing" | head -n 20 >&2
        FAILED=1
        return 1
    fi
}

report() {
    local ended
    ended=$(date +%s.%N)
    printf 'soak: %d cycles, %d orders acknowledged, %d missing, log at position %d, %.1f s\n' \
        "$DONE" "${ACKED:-0}" "${MISSING:-0}" "${LOG_END:-0}" "$(awk -v a="$STARTED" -v b="$ended" 'BEGIN { print b - a }')"
}

mkdir -p "$WORK/acks"
STARTED=$(date +%s.%N)
DONE=0
MISSING=0
echo "soak: $CYCLES cycles of kill -9 under $WORKERS workers; data in $DATA" >&2
start_server
send_command /products '{"sku":"SOAK","title":"Soak","category":"soak","price":"1.00","weight_g":1,"low_stock_threshold":0}' \
    soak-list 201 200
for ((cycle = 1; cycle <= CYCLES; cycle++)); do
    if ((cycle > 1)); then
        start_server
        check_cycle $((cycle - 1)) || { report; exit 1; }
        check_log || { report; exit 1; }
    fi
    send_command /products/SOAK/receipts '{"quantity":100000,"unit_cost":"0.50","supplier_ref":"soak"}' \
        "soak-receive-$cycle" 200
    pids=()
    for ((w = 0; w < WORKERS; w++)); do
        worker "$cycle" "$w" &
        pids+=($!)
    done
    sleep "$(awk -v min="$RUN_MS_MIN" -v max="$RUN_MS_MAX" -v r="$RANDOM" 'BEGIN { printf "%.3f", (min + (max - min) * r / 32767) / 1000 }')"
    kill -KILL "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    for pid in "${pids[@]}"; do
        wait "$pid"
    done
    DONE=$cycle
    if ((cycle % 10 == 0)); then
        echo "soak: cycle $cycle, $(cat "$WORK/acks/"* 2>/dev/null | wc -l) orders acknowledged so far" >&2
    fi
done
start_server
check_cycle "$CYCLES" || { report; exit 1; }
check_log || { report; exit 1; }
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || { echo "soak: the server did not exit 0 on SIGTERM" >&2; FAILED=1; report; exit 1; }
SERVER_PID=
if ! "$EMPORIUM" verify --data "$DATA" >"$WORK/verify" 2>&1; then
    echo "soak: verify failed:" >&2
    cat "$WORK/verify" >&2
    FAILED=1
    report
    exit 1
fi
report
