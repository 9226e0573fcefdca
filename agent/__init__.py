"""The worker agent (`wg-failover agent`) and node enrollment (`wg-failover join`)."""
