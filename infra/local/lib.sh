# shellcheck shell=bash
# Shared pieces of infra/local/run and infra/local/test: private RabbitMQ and
# Postgres instances that live entirely in a state directory, so a developer's
# long-running `run` and a throwaway `test` never share data, ports or the
# system-wide services/clusters the Debian packages ship with.
#
# Meant to be sourced by a script running with `set -euo pipefail`.

WARREN_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WARREN_DEFINITIONS="$WARREN_REPO_ROOT/infra/rabbitmq/definitions.json"
WARREN_RABBITMQ_SBIN=/usr/lib/rabbitmq/bin

# Generous because the first boot of a node creates its Mnesia schema and the
# quorum queues from the definitions; on a loaded 2-core machine that can take
# far longer than the usual ~6 s.
: "${WARREN_START_TIMEOUT:=180}"

_warren_log() { printf '[warren] %s\n' "$*" >&2; }
_warren_die() {
    _warren_log "error: $*"
    exit 1
}

_warren_as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        _warren_die "need root to run '$*' (sudo is not installed)"
    fi
}

# ---------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------

warren_install_deps() { # [EXTRA_PACKAGE...]
    local pkgs=(rabbitmq-server librabbitmq-dev libpq-dev postgresql pkg-config "$@")
    # rabbitmqadmin is a python3 script, and we use python3 to download it.
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)

    local missing=() p
    for p in "${pkgs[@]}"; do
        if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) != "install ok installed" ]]; then
            missing+=("$p")
        fi
    done
    ((${#missing[@]} == 0)) && return 0

    _warren_log "installing missing packages: ${missing[*]}"
    # Outside containers the packages would start the system-wide rabbitmq and
    # postgres on 5672/5432; we never use those, so keep them from starting
    # for the duration of this install if nothing already forbids it.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e $policy ]]; then
        _warren_as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        own_policy=1
    fi
    local rc=0
    _warren_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
    if ((rc == 0)); then
        _warren_as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q "${missing[@]}" || rc=$?
    fi
    ((own_policy)) && _warren_as_root rm -f "$policy"
    ((rc == 0)) || _warren_die "apt-get failed (status $rc) installing: ${missing[*]}"
}

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# Holds an exclusive lock on STATE_DIR for the lifetime of the calling shell,
# so a leftover instance found later is known to be orphaned (its owner died)
# rather than in use by another live run.
warren_lock_state() {
    local state=$1
    mkdir -p "$state"
    exec {WARREN_LOCK_FD}>"$state/.lock"
    flock -n "$WARREN_LOCK_FD" && return 0
    local holders="" fd
    for fd in /proc/[0-9]*/fd/*; do
        [[ $(readlink "$fd" 2>/dev/null) == "$state/.lock" ]] || continue
        fd=${fd#/proc/}
        fd=${fd%%/*}
        [[ $fd == "$$" || $fd == "$BASHPID" ]] && continue
        holders+=$'\n'"  pid $fd: $(tr '\0' ' ' <"/proc/$fd/cmdline" 2>/dev/null | cut -c1-120)"
    done
    _warren_die "$state is in use by another run, or by processes a previous run left behind; stop those first${holders:+:$holders}"
}

# Services must not inherit the state lock: an orphaned broker would otherwise
# keep the state dir "in use" long after the run that owned it died.
# Foreground commands only: a backgrounded function call leaves a subshell
# holding the lock behind.
_warren_without_lock() {
    if [[ -n ${WARREN_LOCK_FD:-} ]]; then
        "$@" {WARREN_LOCK_FD}>&-
    else
        "$@"
    fi
}

_warren_port_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Dies naming the port and, when ss can tell, the process holding it.
_warren_require_free_port() {
    local port=$1 what=$2 holder=""
    _warren_port_listening "$port" || return 0
    if command -v ss >/dev/null 2>&1; then
        holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:.*' | head -n1 || true)
    fi
    _warren_die "port $port ($what) is already in use by another process${holder:+: $holder}"
}

_warren_pid_alive() {
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null
}

_warren_read_pid() {
    [[ -s $1 ]] && tr -dc '0-9' <"$1"
}

# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------

# The node is run straight from /usr/lib/rabbitmq/bin as the invoking user
# (root included) rather than through the /usr/sbin wrappers: those switch to
# the `rabbitmq` user and cd into /var/lib/rabbitmq, i.e. the system node's
# home and cookie. Everything the node and its CLI need is pinned to the state
# dir through the environment, which is also written into STATE/bin wrappers
# so users get a rabbitmqctl that talks to this node.
_warren_rabbitmq_env() {
    local dir=$1 node=$2 amqp=$3
    WARREN_RABBITMQ_ENV=(
        "HOME=$dir/home" # the Erlang cookie lives in $HOME
        "RABBITMQ_NODENAME=$node"
        # An empty env file shadows /etc/rabbitmq/rabbitmq-env.conf.
        "RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf"
        "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf"
        "RABBITMQ_CONFIG_FILES=$dir/conf.d"
        "RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config"
        "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins"
        "RABBITMQ_MNESIA_BASE=$dir/mnesia"
        "RABBITMQ_LOG_BASE=$dir/log"
        "RABBITMQ_PID_FILE=$dir/rabbitmq.pid"
        "RABBITMQ_DIST_PORT=$((amqp + 20000))"
        # A private epmd per instance: we can stop it with our node instead of
        # leaving a shared daemon behind or killing one another node relies on.
        # The nodes of one cluster share theirs (WARREN_RABBITMQ_EPMD_PORT): a node
        # finds its peers through the epmd on the port it uses itself.
        "ERL_EPMD_PORT=$(_warren_epmd_port "$amqp")"
        "ERL_EPMD_ADDRESS=127.0.0.1"
    )
}

_warren_epmd_port() { echo "${WARREN_RABBITMQ_EPMD_PORT:-$(($1 + 21000))}"; }

_warren_write_rabbitmq_wrappers() {
    local state=$1 tool line
    mkdir -p "$state/bin"
    for tool in rabbitmqctl rabbitmq-diagnostics rabbitmq-plugins rabbitmq-queues; do
        {
            printf '#!/bin/sh\n# Generated by infra/local/lib.sh: %s bound to node %s.\n' \
                "$tool" "$WARREN_RABBITMQ_NODE"
            for line in "${WARREN_RABBITMQ_ENV[@]}"; do
                printf 'export %s=%q\n' "${line%%=*}" "${line#*=}"
            done
            printf 'exec %q "$@"\n' "$WARREN_RABBITMQ_SBIN/$tool"
        } >"$state/bin/$tool"
        chmod 755 "$state/bin/$tool"
    done
}

_warren_rabbitmq_log_tail() {
    local dir=$WARREN_RABBITMQ_DIR f
    for f in "$dir/log/startup.log" "$dir/log/$WARREN_RABBITMQ_NODE.log"; do
        [[ -f $f ]] || continue
        _warren_log "---- last lines of $f ----"
        tail -n 40 "$f" >&2
    done
}

_warren_stop_rabbitmq_node() {
    local pid
    pid=$(_warren_read_pid "$WARREN_RABBITMQ_DIR/rabbitmq.pid" || true)
    if _warren_pid_alive "$pid"; then
        _warren_log "stopping RabbitMQ node $WARREN_RABBITMQ_NODE (pid $pid)"
        # `stop PIDFILE` returns only once the VM has exited.
        timeout 90 "$WARREN_RABBITMQ_STATE/bin/rabbitmqctl" -q stop \
            "$WARREN_RABBITMQ_DIR/rabbitmq.pid" >/dev/null 2>&1 || true
        _warren_kill_wait "$pid"
    fi
    # The sh wrapper of a node that never got as far as writing its pid file.
    _warren_pid_alive "${WARREN_RABBITMQ_LAUNCHER_PID:-}" && _warren_kill_wait "$WARREN_RABBITMQ_LAUNCHER_PID"
    WARREN_RABBITMQ_LAUNCHER_PID=""
    local epmd_port
    epmd_port=$(_warren_epmd_port "$WARREN_RABBITMQ_AMQP_PORT")
    if command -v epmd >/dev/null 2>&1 && _warren_port_listening "$epmd_port" &&
        ! ERL_EPMD_PORT=$epmd_port epmd -names 2>/dev/null | grep -q '^name '; then
        ERL_EPMD_PORT=$epmd_port epmd -kill >/dev/null 2>&1 || true
    fi
}

# TERM, then KILL after a deadline.
_warren_kill_wait() {
    local pid=$1 i
    _warren_pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        _warren_pid_alive "$pid" || return 0
        sleep 0.1
    done
    _warren_log "pid $pid ignored SIGTERM for 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# warren_select_rabbitmq STATE_DIR NODE_NAME AMQP_PORT MGMT_PORT
# Points the functions below (stop, kill) and STATE_DIR/bin's wrappers at one node,
# without starting it: a script handling several nodes selects each in turn.
warren_select_rabbitmq() {
    local state=$1 node=$2 amqp=$3 mgmt=$4
    # The launcher pid belongs to the node selected before (stopping this one must not
    # take it down).
    [[ ${WARREN_RABBITMQ_NODE:-} == "$node" ]] || WARREN_RABBITMQ_LAUNCHER_PID=""
    WARREN_RABBITMQ_STATE=$state
    WARREN_RABBITMQ_DIR="$state/rabbitmq"
    WARREN_RABBITMQ_NODE=$node
    WARREN_RABBITMQ_AMQP_PORT=$amqp
    WARREN_RABBITMQ_MGMT_PORT=$mgmt
    mkdir -p "$WARREN_RABBITMQ_DIR"/{home,mnesia,log,conf.d}
    _warren_rabbitmq_env "$WARREN_RABBITMQ_DIR" "$node" "$amqp"
    _warren_write_rabbitmq_wrappers "$state"
}

# The pid of the selected node's VM, if it runs (empty otherwise).
warren_rabbitmq_pid() {
    local pid
    pid=$(_warren_read_pid "$WARREN_RABBITMQ_DIR/rabbitmq.pid" || true)
    if _warren_pid_alive "$pid"; then echo "$pid"; fi
}

# Stops the selected node gracefully (rabbitmqctl stop, then TERM/KILL).
warren_stop_rabbitmq() { _warren_stop_rabbitmq_node; }

# SIGKILLs the selected node's VM, as a crash or a power cut would (fault tests): no
# goodbye to clients or peers. Its data stays; warren_start_rabbitmq boots it again.
warren_kill_rabbitmq() {
    local pid i
    pid=$(warren_rabbitmq_pid)
    [[ -n $pid ]] || _warren_die "RabbitMQ node $WARREN_RABBITMQ_NODE is not running"
    _warren_log "killing RabbitMQ node $WARREN_RABBITMQ_NODE (pid $pid) with SIGKILL"
    kill -KILL "$pid"
    for ((i = 0; i < 300; i++)); do
        _warren_pid_alive "$pid" || break
        sleep 0.1
    done
    # Its AMQP port must be closed before anyone counts on it being down.
    until ! _warren_port_listening "$WARREN_RABBITMQ_AMQP_PORT"; do sleep 0.1; done
}

# warren_start_rabbitmq STATE_DIR NODE_NAME AMQP_PORT MGMT_PORT
warren_start_rabbitmq() {
    local state=$1 node=$2 amqp=$3 mgmt=$4
    local dir="$state/rabbitmq"
    [[ -x $WARREN_RABBITMQ_SBIN/rabbitmq-server ]] ||
        _warren_die "$WARREN_RABBITMQ_SBIN/rabbitmq-server not found (run warren_install_deps)"
    [[ -f $WARREN_DEFINITIONS ]] || _warren_die "missing $WARREN_DEFINITIONS"

    warren_select_rabbitmq "$state" "$node" "$amqp" "$mgmt"

    # Restart rather than reuse a node left behind by a run that died: the
    # state lock says nobody owns it any more, and a fresh boot re-applies the
    # config and definitions.
    _warren_stop_rabbitmq_node

    _warren_require_free_port "$amqp" "RabbitMQ AMQP"
    _warren_require_free_port "$mgmt" "RabbitMQ management"
    _warren_require_free_port "$((amqp + 20000))" "RabbitMQ Erlang distribution"
    # An epmd left on our port is harmless and gets reused (the cluster's nodes
    # share one), anything else is not.
    local epmd_port
    epmd_port=$(_warren_epmd_port "$amqp")
    if _warren_port_listening "$epmd_port" &&
        ! ERL_EPMD_PORT=$epmd_port epmd -names >/dev/null 2>&1; then
        _warren_require_free_port "$epmd_port" "Erlang port mapper (epmd)"
    fi

    # The nodes of a cluster must share a cookie (WARREN_RABBITMQ_COOKIE).
    if [[ -n ${WARREN_RABBITMQ_COOKIE:-} ]]; then
        rm -f "$dir/home/.erlang.cookie"
        (umask 077 && printf '%s' "$WARREN_RABBITMQ_COOKIE" >"$dir/home/.erlang.cookie")
    elif [[ ! -s $dir/home/.erlang.cookie ]]; then
        (umask 077 && od -An -N20 -tx1 /dev/urandom | tr -d ' \n' >"$dir/home/.erlang.cookie")
    fi
    chmod 400 "$dir/home/.erlang.cookie"
    : >"$dir/rabbitmq-env.conf"
    echo '[rabbitmq_management].' >"$dir/enabled_plugins"
    cat >"$dir/rabbitmq.conf" <<EOF
# Generated by infra/local/lib.sh on every start; edits are overwritten.
listeners.tcp.1 = 127.0.0.1:$amqp
distribution.listener.interface = 127.0.0.1
management.tcp.ip = 127.0.0.1
management.tcp.port = $mgmt
load_definitions = $WARREN_DEFINITIONS
EOF

    _warren_log "starting RabbitMQ node $node (AMQP $amqp, management $mgmt, logs in $dir/log)"
    # Own session: a Ctrl-C on the terminal must not reach the broker before
    # the fleet has been stopped.
    (
        [[ -z ${WARREN_LOCK_FD:-} ]] || exec {WARREN_LOCK_FD}>&-
        exec setsid env "${WARREN_RABBITMQ_ENV[@]}" "$WARREN_RABBITMQ_SBIN/rabbitmq-server"
    ) >>"$dir/log/startup.log" 2>&1 </dev/null &
    WARREN_RABBITMQ_LAUNCHER_PID=$!

    local deadline=$((SECONDS + WARREN_START_TIMEOUT))
    # Cheap probe first: each rabbitmqctl call boots an Erlang VM.
    until _warren_port_listening "$amqp"; do
        if ! _warren_pid_alive "$WARREN_RABBITMQ_LAUNCHER_PID"; then
            _warren_rabbitmq_log_tail
            _warren_die "RabbitMQ node $node exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            _warren_rabbitmq_log_tail
            _warren_die "RabbitMQ node $node did not open port $amqp within ${WARREN_START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    if ! "$state/bin/rabbitmqctl" -q await_startup --timeout $((deadline - SECONDS > 5 ? deadline - SECONDS : 5)) >/dev/null; then
        _warren_rabbitmq_log_tail
        _warren_die "RabbitMQ node $node did not finish booting"
    fi

    # A definitions file that fails to import only logs an error, leaving a
    # broker without users or queues; catch that here rather than in the fleet.
    local missing_queues
    while :; do
        missing_queues=$("$state/bin/rabbitmqctl" -q list_queues --no-table-headers name 2>/dev/null |
            python3 -c '
import json, sys
have = set(sys.stdin.read().split())
want = {q["name"] for q in json.load(open(sys.argv[1])).get("queues", [])}
print(" ".join(sorted(want - have)))' "$WARREN_DEFINITIONS") || missing_queues="(could not list queues)"
        [[ -z $missing_queues ]] && break
        if ((SECONDS >= deadline)); then
            _warren_rabbitmq_log_tail
            _warren_die "definitions from $WARREN_DEFINITIONS were not loaded; missing queues: $missing_queues"
        fi
        sleep 1
    done

    # Fetched from the node itself so the tool always matches the broker.
    WARREN_RABBITMQADMIN="$state/bin/rabbitmqadmin"
    local url="http://127.0.0.1:$mgmt/cli/rabbitmqadmin"
    until python3 - "$url" "$WARREN_RABBITMQADMIN.tmp" <<'PY' 2>/dev/null; do
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    data = r.read()
open(sys.argv[2], "wb").write(data)
PY
        if ((SECONDS >= deadline)); then
            _warren_rabbitmq_log_tail
            _warren_die "could not download $url"
        fi
        sleep 0.5
    done
    chmod 755 "$WARREN_RABBITMQADMIN.tmp"
    mv -f "$WARREN_RABBITMQADMIN.tmp" "$WARREN_RABBITMQADMIN"

    export WARREN_AMQP_URL="amqp://guest:guest@127.0.0.1:$amqp/%2f"
    export WARREN_RABBITMQ_MANAGEMENT_URL="http://127.0.0.1:$mgmt"
    export WARREN_RABBITMQADMIN
    _warren_log "RabbitMQ node $node is up"
}

# ---------------------------------------------------------------------------
# Postgres
# ---------------------------------------------------------------------------

_warren_pg_bindir() {
    local dir
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        [[ -x $dir/initdb && -x $dir/pg_ctl ]] && {
            echo "$dir"
            return
        }
    fi
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n1)
    [[ -n $dir && -x $dir/initdb ]] || _warren_die "no Postgres server binaries found (run warren_install_deps)"
    echo "$dir"
}

# The server refuses to run as root, so root hands the cluster to the
# `postgres` account; anyone else owns it themselves.
_warren_as_db() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_warren_pg_ctl() {
    _warren_as_db "$WARREN_PG_BINDIR/pg_ctl" -D "$WARREN_PG_DATA" "$@"
}

_warren_stop_postgres_cluster() {
    [[ -f ${WARREN_PG_DATA:-}/PG_VERSION ]] || return 0
    if _warren_pg_ctl status >/dev/null 2>&1; then
        _warren_log "stopping Postgres ($WARREN_PG_DATA)"
        _warren_pg_ctl stop -m fast -w -t 60 >/dev/null ||
            _warren_pg_ctl stop -m immediate -w -t 30 >/dev/null || true
    fi
}

# warren_start_postgres STATE_DIR PORT
warren_start_postgres() {
    local state=$1 port=$2
    WARREN_PG_BINDIR=$(_warren_pg_bindir)
    WARREN_PG_STATE=$state
    WARREN_PG_DATA="$state/pg"
    local run="$state/pg-run" # socket, log; must be writable by the server
    local pwfile="$state/pg-superuser.password"

    mkdir -p "$WARREN_PG_DATA" "$run"
    if [[ $EUID -eq 0 ]]; then
        chmod o+x "$state"
        chown postgres: "$WARREN_PG_DATA" "$run"
        runuser -u postgres -- test -w "$WARREN_PG_DATA" ||
            _warren_die "the postgres user cannot reach $WARREN_PG_DATA; every parent directory needs o+x"
    fi
    chmod 700 "$WARREN_PG_DATA" "$run"

    if [[ -f $WARREN_PG_DATA/PG_VERSION ]]; then
        local have want
        have=$(<"$WARREN_PG_DATA/PG_VERSION")
        want=$("$WARREN_PG_BINDIR/postgres" -V | grep -oE '[0-9]+' | head -n1)
        [[ $have == "$want" ]] ||
            _warren_die "$WARREN_PG_DATA was created by Postgres $have but $WARREN_PG_BINDIR is $want; remove $WARREN_PG_DATA"
    fi

    # Same reasoning as for RabbitMQ: an instance still up is an orphan.
    _warren_stop_postgres_cluster
    _warren_require_free_port "$port" "Postgres"

    if [[ ! -f $WARREN_PG_DATA/PG_VERSION ]]; then
        # The superuser gets a random password so admin work can go over TCP,
        # which works for root and non-root alike and needs no socket path.
        [[ -s $pwfile ]] || (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$pwfile")
        install -m 600 "$pwfile" "$run/initdb.pw"
        [[ $EUID -eq 0 ]] && chown postgres: "$run/initdb.pw"
        _warren_log "initialising Postgres cluster in $WARREN_PG_DATA"
        if ! _warren_as_db "$WARREN_PG_BINDIR/initdb" -D "$WARREN_PG_DATA" -U postgres \
            --pwfile="$run/initdb.pw" --auth=scram-sha-256 --encoding=UTF8 --locale=C \
            >"$run/initdb.log" 2>&1; then
            rm -f "$run/initdb.pw"
            cat "$run/initdb.log" >&2
            _warren_die "initdb failed"
        fi
        rm -f "$run/initdb.pw"
        echo "include 'warren.conf'" >>"$WARREN_PG_DATA/postgresql.conf"
    fi

    # unix_socket_directories is limited to ~100 bytes; deep checkouts go TCP-only.
    local sockdir=$run
    ((${#sockdir} + 20 > 100)) && sockdir=""
    cat >"$WARREN_PG_DATA/warren.conf" <<EOF
# Generated by infra/local/lib.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdir'
# The test suite runs many producers, consumers and schedulers at once, each with a pool.
max_connections = 300
EOF
    [[ $EUID -eq 0 ]] && chown postgres: "$WARREN_PG_DATA/warren.conf"

    _warren_log "starting Postgres on 127.0.0.1:$port (log $run/postgres.log)"
    # Own session, so Ctrl-C reaches the fleet but not the database.
    if ! _warren_without_lock _warren_as_db setsid -w "$WARREN_PG_BINDIR/pg_ctl" -D "$WARREN_PG_DATA" \
        -l "$run/postgres.log" -w -t "$WARREN_START_TIMEOUT" start >/dev/null; then
        _warren_log "---- last lines of $run/postgres.log ----"
        tail -n 40 "$run/postgres.log" >&2 || true
        _warren_die "Postgres did not start"
    fi

    if ! PGPASSWORD=$(<"$pwfile") "$WARREN_PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$port" -U postgres -d postgres >/dev/null <<'SQL'; then
SELECT 'CREATE ROLE warren LOGIN PASSWORD ''warren'''
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'warren') \gexec
SELECT 'CREATE DATABASE warren OWNER warren'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'warren') \gexec
SQL
        _warren_die "could not create the warren role/database"
    fi

    export WARREN_DATABASE_URL="postgresql://warren:warren@127.0.0.1:$port/warren"
    _warren_log "Postgres is up"
}

# ---------------------------------------------------------------------------
# Both
# ---------------------------------------------------------------------------

# Safe to call repeatedly and from traps, whatever was or wasn't started.
warren_stop_all() {
    if [[ -n ${WARREN_RABBITMQ_DIR:-} ]]; then
        _warren_stop_rabbitmq_node
    fi
    if [[ -n ${WARREN_PG_DATA:-} ]]; then
        _warren_stop_postgres_cluster
    fi
}

warren_print_endpoints() {
    local s=${WARREN_RABBITMQ_STATE:-}
    cat <<EOF

==== Warren local services ==========================================
RabbitMQ node     ${WARREN_RABBITMQ_NODE:-?} (state ${WARREN_RABBITMQ_DIR:-?})
  AMQP            ${WARREN_AMQP_URL:-not started}
  management UI   ${WARREN_RABBITMQ_MANAGEMENT_URL:-not started}/  (guest / guest)
  rabbitmqadmin   ${WARREN_RABBITMQADMIN:-?}
                  e.g. $s/bin/rabbitmqadmin -P ${WARREN_RABBITMQ_MGMT_PORT:-?} -f raw_json list queues name messages
  rabbitmqctl     $s/bin/rabbitmqctl status
Postgres          ${WARREN_DATABASE_URL:-not started}  (data ${WARREN_PG_DATA:-?})
  psql            ${WARREN_PG_BINDIR:+$WARREN_PG_BINDIR/}psql '${WARREN_DATABASE_URL:-}'
  superuser       postgres, password in ${WARREN_PG_STATE:-?}/pg-superuser.password
=====================================================================

EOF
}
