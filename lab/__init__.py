"""`wg-failover lab`: the whole system on one machine, in network namespaces.

A `master` namespace runs the responder, Prometheus and Alertmanager; each worker namespace runs
wireguard-go, the exporter and the service address 10.99.0.1 on `lo`; each client namespace runs
wireguard-go (every worker a peer) and the switcher. The components run as separate processes
through their own CLIs: the lab never imports them. A running lab's state (pids, addresses,
secrets) lives in a lab directory, so `up`, `status`, `failover`, `drain` and `down` work from
separate invocations.
"""
