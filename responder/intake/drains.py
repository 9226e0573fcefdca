"""Admin drains: a drained worker takes no clients, and its clients get a new assignment first."""

from __future__ import annotations

from dataclasses import replace

from ..draft import Draft
from ..state import ResponderState


async def set_drain(state: ResponderState, name: str, drain: bool) -> None:
    """Drain or undrain fleet worker `name`. Raises StoreError when it cannot commit."""
    await state.change(lambda d: drain_worker(d, name, drain))


def drain_worker(d: Draft, name: str, drain: bool) -> None:
    row = d.worker(name)
    before = d.views()[name].draining
    d.set_worker(replace(row, drain_admin=drain))
    if not drain:
        # Undrain overrides a firing drain alert too: the operator has the last word.
        for fp, (w, act) in d.alerts().items():
            if w == name and act == "drain":
                d.tx.alerts_del.add(fp)
    if before != drain:
        d.event("drain" if drain else "undrain", worker=name, cause="admin")
