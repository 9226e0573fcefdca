"""wg-failover responder: Alertmanager webhook in, durable fleet state, planner, assignments out."""
