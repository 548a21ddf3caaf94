"""Gathering: what the encoder identities of one process send at the same instant goes out
together (their reveal pushes, `reveals.PushGroup`; their commits, `commits.CommitGroup`).

The identities of a process run the same round clock, so they commit at the same instant and
reveal at the same instant. Sent one by one, 24 identities cost every receiver 24 requests
or 24 gossip messages, each paid in full by the transport; gathered, one (docs/BENCHMARKS.md,
scale ladder).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

T = TypeVar("T")
R = TypeVar("R")


class Gathering(Generic[T, R]):
    """Asks made within ``window`` seconds of the first are sent together: ``send`` gets
    every gathered ask at once and returns one result per ask, in order. No task of its own:
    the first asker of a gathering sends it for everyone, and hands the next gathering to the
    first that asked meanwhile; a leader cancelled while gathering or sending hands it on
    too, so no ask waits forever. An ask whose sending failed or was cancelled gets
    ``missing``."""

    def __init__(
        self, window: float, send: Callable[[list[T]], Awaitable[list[R]]], missing: R
    ) -> None:
        self._window = window
        self._send = send
        self._missing = missing
        self._pending: list[_Ask[T, R]] = []
        self._leading = False

    async def ask(self, value: T) -> R:
        """``value`` sent with the others gathered meanwhile; its result from ``send``."""
        ask = _Ask(value, self._missing)
        self._pending.append(ask)
        if self._leading:
            try:
                await ask.woken.wait()
            except BaseException:
                if ask in self._pending:
                    self._pending.remove(ask)
                if ask.lead:
                    self._hand_on()
                raise
            if not ask.lead:
                return ask.result
        self._leading = True
        asks: list[_Ask[T, R]] = []
        try:
            await trio.sleep(self._window)
            asks, self._pending = self._pending, []
            results = await self._send([a.value for a in asks])
            for a, r in zip(asks, results, strict=True):
                a.result = r
        finally:
            for a in asks:
                a.woken.set()
            if ask in self._pending:  # cancelled before it took the gathering
                self._pending.remove(ask)
            self._hand_on()
        return ask.result

    def _hand_on(self) -> None:
        """The leader is done: the first ask still waiting leads the next gathering."""
        if self._pending:
            self._pending[0].lead = True
            self._pending[0].woken.set()
        else:
            self._leading = False


@dataclass(eq=False)
class _Ask(Generic[T, R]):
    """One ask waiting in a `Gathering`."""

    value: T
    result: R
    lead: bool = False
    """Set when this ask is handed the lead of the next gathering."""
    woken: trio.Event = field(default_factory=trio.Event)
