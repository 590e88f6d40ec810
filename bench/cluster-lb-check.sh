#!/usr/bin/env bash
# Checks the HAProxy and nginx examples of docs/cluster.md ("Deployment")
# against real processes on loopback: nats-server -js, two Switchboard
# nodes, HAProxy (health check on GET /healthz) then nginx in front; a
# session, a command and a WebSocket upgrade through each, then a node
# SIGKILLed and the same cookie served by the other. Prints what it checks;
# exits non-zero at the first check that fails. Needs nats-server, haproxy,
# nginx, curl, python3 (Debian packages). Not part of bench/run.
#   bench/cluster-lb-check.sh [path/to/switchboard]
set -euo pipefail
[[ -n ${TRACE:-} ]] && set -x
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/debug/switchboard}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; [[ -n ${KEEP:-} ]] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT
say() { printf '[lb-check] %s\n' "$*"; }
# check CONDITION-RESULT MESSAGE: says MESSAGE, or fails with it.
check() { if [[ $1 == 0 ]]; then say "$2"; else say "FAILED: $2"; exit 1; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ws_upgrade PORT SESSION: the status line of a WebSocket handshake sent
# through the balancer on PORT with the session's cookie.
ws_upgrade() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall((f"GET /events/api/ws?tab=t&page=home HTTP/1.1\r\nHost: panels.example.org\r\n"
           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://panels.example.org\r\n"
           f"Cookie: sb_session={sys.argv[2]}\r\n\r\n").encode())
print(s.recv(4096).decode(errors="replace").split("\r\n")[0])
PY
}

NATS_PORT=$(free_port)
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/js" >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$NATS_PORT) 2>/dev/null && break; sleep 0.1; done

start_node() { # name → prints its port
    local name=$1
    "$BIN" --projects tests/projects --bind 127.0.0.1:0 --cluster "nats://127.0.0.1:$NATS_PORT" \
        --node "$name" --allowed-hosts panels.example.org >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!); echo $! > "$WORK/$name.pid"
    for _ in $(seq 200); do
        port=$(sed -n 's#^Switchboard listening on http://127.0.0.1:\([0-9]*\)/#\1#p' "$WORK/$name.out")
        [[ -n $port ]] && { echo "$port"; return; }
        sleep 0.1
    done
    echo "node $name did not start" >&2; exit 1
}
A=$(start_node a); B=$(start_node b)
LB=$(free_port)
cat > "$WORK/haproxy.cfg" <<CFG
defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout client  60s
    timeout server  60s
    timeout tunnel  1h
frontend panels
    bind 127.0.0.1:$LB
    default_backend switchboard
backend switchboard
    balance leastconn
    cookie sb_node insert indirect nocache httponly
    option redispatch
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host panels.example.org
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions
    server a 127.0.0.1:$A check cookie a
    server b 127.0.0.1:$B check cookie b
CFG
haproxy -c -q -f "$WORK/haproxy.cfg"
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$LB) 2>/dev/null && break; sleep 0.1; done
sleep 1.5 # two health checks of each node: both up
H=(-H "Host: panels.example.org")
JAR=$WORK/cookies
curl -sf "${H[@]}" -c "$JAR" -b "$JAR" -X POST "http://127.0.0.1:$LB/events/api/session" >/dev/null
NODE=$(sed -n 's/.*\tsb_node\t\(.*\)$/\1/p' "$JAR")
say "session created through HAProxy on node $NODE (sticky cookie sb_node=$NODE)"
cmd() { curl -s "${H[@]}" -c "$JAR" -b "$JAR" -H 'content-type: application/json' \
    -d "{\"type\":\"command\",\"seq\":1,\"name\":\"$1\",\"param\":\"$2\"}" "http://127.0.0.1:$LB/events/api/command"; }
cmd set lobby | grep -q '"status":"ok"'&& r=0 || r=$?; check $r "command through HAProxy: ok"
SESSION=$(sed -n 's/.*\tsb_session\t\(.*\)$/\1/p' "$JAR")
UPGRADE=$(ws_upgrade "$LB" "$SESSION")
[[ $UPGRADE == *" 101 "* ]]&& r=0 || r=$?; check $r "WebSocket upgrade through HAProxy: $UPGRADE"
kill -9 "$(cat "$WORK/$NODE.pid")"
say "node $NODE SIGKILLed"
for _ in $(seq 50); do grep -q "Server switchboard/$NODE is DOWN" "$WORK/haproxy.log" && break; sleep 0.1; done
grep -o "Server switchboard/$NODE is DOWN[^,]*" "$WORK/haproxy.log" | head -1 | sed 's/^/[lb-check] haproxy: /'
REPLY=$(cmd get "")
[[ $REPLY == *'room=lobby'* ]]&& r=0 || r=$?; check $r "same cookie after the kill: redispatched to the other node, session resumed: $REPLY"

# nginx, in front of the surviving node and a new one.
C=$(start_node c)
NGINX=$(free_port)
cat > "$WORK/nginx.conf" <<CFG
events {}
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
http {
    access_log off;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    upstream switchboard {
        hash \$cookie_sb_session\$remote_addr consistent;
        server 127.0.0.1:$A max_fails=2 fail_timeout=10s;
        server 127.0.0.1:$B max_fails=2 fail_timeout=10s;
        server 127.0.0.1:$C max_fails=2 fail_timeout=10s;
    }
    server {
        listen 127.0.0.1:$NGINX;
        location / {
            proxy_pass http://switchboard;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_next_upstream error timeout http_502 http_503;
        }
    }
}
CFG
nginx -q -t -c "$WORK/nginx.conf" -p "$WORK"
nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon off;' & PIDS+=($!)
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$NGINX) 2>/dev/null && break; sleep 0.1; done
LB=$NGINX
rm -f "$JAR"
curl -sf "${H[@]}" -c "$JAR" -b "$JAR" -X POST "http://127.0.0.1:$LB/events/api/session" >/dev/null
cmd set hall | grep -q '"status":"ok"'&& r=0 || r=$?; check $r "nginx: session and command: ok"
SESSION=$(sed -n 's/.*\tsb_session\t\(.*\)$/\1/p' "$JAR")
UPGRADE=$(ws_upgrade "$LB" "$SESSION")
[[ $UPGRADE == *" 101 "* ]]&& r=0 || r=$?; check $r "nginx: WebSocket upgrade: $UPGRADE"
SERVED=$(grep -l "session started.*session=\"${SESSION:0:8}\"" "$WORK"/?.err | head -1 | xargs -r basename | cut -d. -f1)
kill -9 "$(cat "$WORK/$SERVED.pid")"
say "nginx: node $SERVED (the one the session's hash chose) SIGKILLed"
REPLY=$(cmd get "")
[[ $REPLY == *'room=hall'* ]]&& r=0 || r=$?; check $r "nginx: same cookie, next upstream, session resumed: $REPLY"
say "all checks passed"
