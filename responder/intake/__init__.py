"""What comes in and changes the fleet: Alertmanager alerts, drains, client reports.

Each module has functions over a `Draft` (the rules; no I/O, no served state touched) and one
async entry point that runs them through `ResponderState.change`.
"""
