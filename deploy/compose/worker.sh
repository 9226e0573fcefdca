#!/bin/sh
# An example worker in a container: WireGuard (the kernel module if the host has it, else
# wireguard-go) from the fleet file, the service address 10.99.0.1, and the exporter.
# Usage: worker.sh NAME   (a worker name from /etc/wg-failover/fleet.yaml)
set -eu
name=${1:?usage: worker.sh WORKER-NAME}
conf=/run/wg0.conf
umask 077
wg-failover config worker "$name" --private-key-file "/etc/wg-failover/keys/$name.key" -o "$conf"
# wg-quick falls back to wireguard-go when the kernel has no wireguard module.
export WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go
wg-quick up "$conf"
# The service the clients reach through their active worker (the same address on every worker).
ip addr add 10.99.0.1/32 dev lo 2>/dev/null || true
exec wg-failover exporter --listen :9586 --interface wg0 --worker "$name"
