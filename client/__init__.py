"""`wg-failover switcher`: the client side.

It follows the responder's assignment, probes every worker's tunnel address through that worker's
own peer, and moves the client's routes between warm peers with one `wg set` (see
docs/switcher.md). The decisions live in `client.decisions` as plain logic on plain data; sockets,
HTTP and `wg` sit at the edges (`probe`, `sources`, `reporter`, `wgctl`).
"""
