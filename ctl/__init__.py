"""`wg-failover ctl`: the operator's CLI over the responder's admin API (HTTP only; it imports
nothing from the responder, so it runs on any machine that can reach the API)."""
