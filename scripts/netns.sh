#!/usr/bin/env bash
# Simulated machines for the failover tests: Linux network namespaces
# ("nodes"), each joined to the coordination store and to the broker by two
# separate links that can be cut one at a time. A cut link is a partition:
# the link's interface goes down, nothing is filtered.
#
# Layout of network ID (0-254, the third octet of its addresses; many
# networks exist side by side, one per test, so parallel tests never share
# an address or a name):
#
#   root namespace (the test process, etcd, tansu)
#     lsst<ID>  bridge 10.231.<ID>.1/24   the store side: etcd listens here
#     lsbk<ID>  bridge 10.232.<ID>.1/24   the broker side: tansu listens and
#                                          advertises here
#   node N (1-200): namespace ls-<ID>-n<N>, loopback up, no default route
#     store   10.231.<ID>.<10+N>/24  veth to lsst<ID>, root side ls<ID>s<N>
#     broker  10.232.<ID>.<10+N>/24  veth to lsbk<ID>, root side ls<ID>b<N>
#
# A node reaches only the two bridge addresses (and the other nodes); the
# root namespace reaches a node's addresses too, so a test can call a
# host's admin HTTP bound to 10.232.<ID>.<10+N>. Cutting a link sets its
# root-side veth down: the node's packets on it are dropped, so a connect
# hangs until its timeout and an established TCP connection stalls (no
# reset, no error) and resumes by retransmission once healed — what a real
# partition does. A connect across a cut ends in a timeout, or in "no route
# to host" once address resolution gave up (about 3 s). Healing sets the
# veth up and forgets the failed resolutions, so the next connect works.
# Cutting one node's link never affects another node.
#
# Usage (as root):
#   scripts/netns.sh up ID|auto NODES     create network ID (auto: the lowest
#                                         free one) with nodes 1..NODES;
#                                         prints the ID
#   scripts/netns.sh cut ID NODE store|broker|all
#   scripts/netns.sh heal ID NODE store|broker|all
#   scripts/netns.sh exec ID NODE CMD...  run CMD inside the node (ip netns
#                                         exec execs it: the PID is CMD's)
#   scripts/netns.sh down ID              kill every process left in its
#                                         nodes, remove everything of ID
#                                         (idempotent, also when half made)
#   scripts/netns.sh list                 the networks, owners and links
#   scripts/netns.sh gc                   down every network whose owner died
#
# Ownership: `up` records its owner process (LOGSTREAM_NETNS_OWNER, a PID,
# default the caller's: the test process) in the store bridge's alias, with
# the process's start time so a reused PID is not mistaken for it. `up auto`
# first removes the networks of dead owners (a test killed before its
# teardown ran), under a lock (/run/lock/logstream-netns.lock) that also
# makes choosing a free ID atomic across processes. LOGSTREAM_NETNS_OWNER=none
# keeps a network until `down`.
#
# Exit status: 0 done, 1 failed, 2 bad usage, 3 cannot run here (not root,
# no `ip`): tests skip on 3. LOGSTREAM_NETNS_PRETEND_UNPRIVILEGED=1 makes the
# script answer 3 as if it were not root (to check the skip path).
set -euo pipefail

STORE_NET=10.231
BROKER_NET=10.232
MAX_ID=254
MAX_NODES=200
LOCK=/run/lock/logstream-netns.lock
ALIAS_TAG=logstream-netns

die() { echo "netns.sh: $*" >&2; exit 1; }
usage() { echo "netns.sh: $*; usage: netns.sh up ID|auto NODES | cut|heal ID NODE store|broker|all | exec ID NODE CMD... | down ID | list | gc" >&2; exit 2; }
cannot_run() { echo "netns.sh: $*" >&2; exit 3; }

IP=/usr/sbin/ip
[[ -x $IP ]] || IP=$(command -v ip) || cannot_run "network namespaces need iproute2's ip command, which is not installed (apt-get install iproute2)."
if [[ -n ${LOGSTREAM_NETNS_PRETEND_UNPRIVILEGED:-} ]]; then
    cannot_run "network namespaces need root (CAP_NET_ADMIN), and LOGSTREAM_NETNS_PRETEND_UNPRIVILEGED is set."
elif [[ $EUID -ne 0 ]]; then
    cannot_run "network namespaces need root (CAP_NET_ADMIN), and this runs as uid $EUID."
fi

store_bridge() { echo "lsst$1"; }
broker_bridge() { echo "lsbk$1"; }
namespace() { echo "ls-$1-n$2"; }
# Root-side veth of node $2's link $3 (s or b) in network $1.
veth() { echo "ls$1$3$2"; }

check_id() {
    [[ $1 =~ ^[0-9]{1,3}$ ]] && ((10#$1 <= MAX_ID)) || usage "network ID must be a number from 0 to $MAX_ID, not '$1'"
    echo $((10#$1))
}
check_node() {
    [[ $2 =~ ^[0-9]{1,3}$ ]] && ((10#$2 >= 1)) || usage "node must be a number from 1, not '$2'"
    [[ -e /run/netns/$(namespace "$1" $((10#$2))) ]] || die "node $2 of network $1 does not exist (scripts/netns.sh list shows what does)."
    echo $((10#$2))
}
# The sides (s, b) a link word names.
link_sides() {
    case $1 in
        store) echo s ;;
        broker) echo b ;;
        all) echo s b ;;
        *) usage "link must be store, broker or all, not '$1'" ;;
    esac
}

# "PID:STARTTIME" of a live process, empty when there is none.
process_identity() {
    local pid=$1 stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # Field 22 is the start time; the command name (field 2) may hold spaces.
    stat=${stat##*) }
    # shellcheck disable=SC2086 # split into fields 3...
    set -- $stat
    echo "$pid:${20}"
}
owner_of() {
    local alias
    alias=$(cat "/sys/class/net/$(store_bridge "$1")/ifalias" 2>/dev/null || true)
    [[ $alias == "$ALIAS_TAG owner="* ]] && echo "${alias#"$ALIAS_TAG owner="}"
    return 0
}
# True when network $1 has an owner that is gone (or no owner record at all:
# a network whose `up` died between creating the bridge and recording).
owner_dead() {
    local owner
    owner=$(owner_of "$1")
    [[ $owner == none ]] && return 1
    [[ -z $owner ]] && return 0
    [[ $(process_identity "${owner%%:*}") != "$owner" ]]
}
existing_ids() {
    local dev
    for dev in /sys/class/net/lsst*; do
        [[ -e $dev ]] || continue
        dev=${dev##*/lsst}
        [[ $dev =~ ^[0-9]+$ ]] && echo "$dev"
    done
    return 0
}

down() {
    local id=$1 ns dev pids
    for ns in $("$IP" netns list | awk '{print $1}' | grep -E "^ls-$id-n[0-9]+$" || true); do
        pids=$("$IP" netns pids "$ns" 2>/dev/null || true)
        [[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
        "$IP" netns del "$ns" 2>/dev/null || true
    done
    # Deleting a root-side veth deletes its node-side peer too.
    for dev in /sys/class/net/*; do
        dev=${dev##*/}
        if [[ $dev =~ ^ls${id}[sb][0-9]+$ || $dev == "$(store_bridge "$id")" || $dev == "$(broker_bridge "$id")" ]]; then
            "$IP" link del "$dev" 2>/dev/null || true
        fi
    done
}

gc() {
    local id
    for id in $(existing_ids); do
        if owner_dead "$id"; then
            echo "netns.sh: removing network $id, its owner $(owner_of "$id") is gone" >&2
            down "$id"
        fi
    done
}

# Claims network $1 for owner $2 by creating its store bridge: fails
# (status 1) without touching anything when the bridge exists already. The
# kernel makes the creation atomic; the lock makes it atomic with recording
# the owner (gc would take a bridge without one for a dead network).
claim() {
    "$IP" link add "$(store_bridge "$1")" type bridge forward_delay 0 2>/dev/null || return 1
    "$IP" link set dev "$(store_bridge "$1")" alias "$ALIAS_TAG owner=$2" || {
        "$IP" link del "$(store_bridge "$1")"
        return 1
    }
}

make_bridges() {
    local id=$1
    "$IP" link add "$(broker_bridge "$id")" type bridge forward_delay 0
    "$IP" addr add "$STORE_NET.$id.1/24" dev "$(store_bridge "$id")"
    "$IP" addr add "$BROKER_NET.$id.1/24" dev "$(broker_bridge "$id")"
    "$IP" link set "$(store_bridge "$id")" up
    "$IP" link set "$(broker_bridge "$id")" up
}

make_node() {
    local id=$1 n=$2 ns side bridge net name
    ns=$(namespace "$id" "$n")
    "$IP" netns add "$ns"
    "$IP" -n "$ns" link set lo up
    for side in s b; do
        if [[ $side == s ]]; then
            bridge=$(store_bridge "$id") net=$STORE_NET name=store
        else
            bridge=$(broker_bridge "$id") net=$BROKER_NET name=broker
        fi
        "$IP" link add "$(veth "$id" "$n" $side)" type veth peer name "$name" netns "$ns"
        "$IP" link set "$(veth "$id" "$n" $side)" master "$bridge" up
        "$IP" -n "$ns" addr add "$net.$id.$((10 + n))/24" dev "$name"
        "$IP" -n "$ns" link set "$name" up
    done
}

# The network `up` is making, removed again by the EXIT trap if it fails.
making=

up() {
    local want=$1 nodes=$2 owner id n
    [[ $nodes =~ ^[0-9]{1,3}$ ]] && ((10#$nodes >= 1 && 10#$nodes <= MAX_NODES)) || usage "NODES must be a number from 1 to $MAX_NODES, not '$nodes'"
    nodes=$((10#$nodes))
    owner=${LOGSTREAM_NETNS_OWNER:-$PPID}
    if [[ $owner != none ]]; then
        [[ $owner =~ ^[0-9]+$ ]] || usage "LOGSTREAM_NETNS_OWNER must be a PID or none, not '$owner'"
        owner=$(process_identity "$owner")
        [[ -n $owner ]] || die "the owner process ${LOGSTREAM_NETNS_OWNER:-$PPID} does not exist."
    fi
    mkdir -p "${LOCK%/*}"
    exec 9>"$LOCK"
    flock 9
    if [[ $want == auto ]]; then
        gc
        for ((id = 0; id <= MAX_ID; id++)); do
            if claim "$id" "$owner"; then break; fi
        done
        ((id <= MAX_ID)) || die "all $((MAX_ID + 1)) network IDs are in use (scripts/netns.sh list shows them; down the stale ones)."
    else
        id=$(check_id "$want")
        claim "$id" "$owner" || die "network $id exists already, owner $(owner_of "$id") (scripts/netns.sh down $id removes it)."
    fi
    flock -u 9
    exec 9>&-
    making=$id
    trap 'echo "netns.sh: making network $making failed; removing what was made" >&2; down "$making"' EXIT
    make_bridges "$id"
    for ((n = 1; n <= nodes; n++)); do
        make_node "$id" "$n"
    done
    trap - EXIT
    echo "$id"
}

set_links() {
    local state=$1 id node sides side
    id=$(check_id "$2")
    node=$(check_node "$id" "$3")
    sides=$(link_sides "$4")
    for side in $sides; do
        "$IP" link set "$(veth "$id" "$node" "$side")" "$state"
        [[ $state == down ]] || forget_failures "$id" "$node" "$side"
    done
}

# After a heal: drop the ARP entries that the cut left incomplete or failed
# on either end of node $2's link $3, so the first packet after the heal
# resolves afresh. Otherwise a connect right after the heal can join an
# address resolution begun during the cut, whose last probe went unanswered,
# and fail with "no route to host" when it gives up.
forget_failures() {
    local id=$1 node=$2 side=$3 net bridge name ip ns
    if [[ $side == s ]]; then
        net=$STORE_NET bridge=$(store_bridge "$id") name=store
    else
        net=$BROKER_NET bridge=$(broker_bridge "$id") name=broker
    fi
    ip=$net.$id.$((10 + node))
    "$IP" -n "$(namespace "$id" "$node")" neigh flush dev "$name" >/dev/null 2>&1 || true
    "$IP" neigh flush to "$ip" dev "$bridge" >/dev/null 2>&1 || true
    for ns in $("$IP" netns list | awk '{print $1}' | grep -E "^ls-$id-n[0-9]+$" || true); do
        "$IP" -n "$ns" neigh flush to "$ip" dev "$name" >/dev/null 2>&1 || true
    done
}

list() {
    local id n ns state dev
    for id in $(existing_ids | sort -n); do
        echo "network $id: store $STORE_NET.$id.1, broker $BROKER_NET.$id.1, owner $(owner_of "$id")"
        for ns in $("$IP" netns list | awk '{print $1}' | grep -E "^ls-$id-n[0-9]+$" | sort -V || true); do
            n=${ns##*-n}
            state=""
            for dev in "$(veth "$id" "$n" s)" "$(veth "$id" "$n" b)"; do
                if [[ $(cat "/sys/class/net/$dev/flags" 2>/dev/null || echo 0) == *[13579bdf] ]]; then
                    state+=" ${dev}:up"
                else
                    state+=" ${dev}:cut"
                fi
            done
            echo "  node $n ($ns) store $STORE_NET.$id.$((10 + n)) broker $BROKER_NET.$id.$((10 + n)):$state"
        done
    done
}

(($# >= 1)) || usage "no command"
command=$1
shift
case $command in
    up) (($# == 2)) || usage "up takes ID|auto and NODES"; up "$1" "$2" ;;
    cut) (($# == 3)) || usage "cut takes ID, NODE and a link"; set_links down "$@" ;;
    heal) (($# == 3)) || usage "heal takes ID, NODE and a link"; set_links up "$@" ;;
    exec)
        (($# >= 3)) || usage "exec takes ID, NODE and a command"
        id=$(check_id "$1")
        node=$(check_node "$id" "$2")
        shift 2
        exec "$IP" netns exec "$(namespace "$id" "$node")" "$@"
        ;;
    down) (($# == 1)) || usage "down takes ID"; down "$(check_id "$1")" ;;
    list) (($# == 0)) || usage "list takes nothing"; list ;;
    gc) (($# == 0)) || usage "gc takes nothing"; gc ;;
    *) usage "unknown command '$command'" ;;
esac
