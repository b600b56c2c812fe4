"""Rise/fall dampening of health-check results (pure).

A route that follows every check result flaps with a flapping check, and every flap costs the
clients a reconvergence. The dampener announces only after `rise` good results in a row and
withdraws only after `fall` bad ones in a row; a result of the other kind starts the count
again. DRAIN is the operator's word and is obeyed at once: withdraw now, announce again only
after `rise` good results once the drain is over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Health(enum.Enum):
    UP = "up"
    DOWN = "down"
    DRAIN = "drain"


class Action(enum.Enum):
    ANNOUNCE = "announce"
    WITHDRAW = "withdraw"


@dataclass
class Dampener:
    rise: int = 3
    fall: int = 3
    announced: bool = False
    _run: int = 0          # results in a row that argue for a change of state

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")

    def feed(self, health: Health) -> Action | None:
        """Take one check result; return the action to take now, if any."""
        if health is Health.DRAIN:
            self._run = 0
            if self.announced:
                self.announced = False
                return Action.WITHDRAW
            return None
        against = (health is Health.DOWN) if self.announced else (health is Health.UP)
        if not against:
            self._run = 0
            return None
        self._run += 1
        if self._run < (self.fall if self.announced else self.rise):
            return None
        self._run = 0
        self.announced = not self.announced
        return Action.ANNOUNCE if self.announced else Action.WITHDRAW

    @property
    def pending(self) -> int:
        """Results in a row seen towards the next change of state."""
        return self._run
