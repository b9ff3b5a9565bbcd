"""The pins (``ReloadModel`` with a URI) of one server's workers, kept in a file the supervisor owns.

A pin is per-process state, and the Redis broadcast only reaches processes that are running when
it is sent: a worker the supervisor restarts (after a crash or ``kill -9``) would start from the
configured source while its siblings keep the pin, and nothing would reconcile them. So every
worker writes its pins to one file in a folder the supervisor creates for this server run, and a
restarted worker starts from it (``ServedModels.keep_pins_in``). The folder dies with the
supervisor, so a restart of the whole server still drops a pin (docs/api.md, "Reload semantics").
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pin:
    """A variant pinned to ``uri``. ``source_version`` is the version its configured source
    resolved to when the pin was set: the pin lasts while the source stays there."""

    uri: str
    source_version: str | None


class PinFile:
    """``{variant: Pin}`` in a JSON file, replaced whole (write beside it, then rename), so a
    worker never reads another's half-written file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Pin]:
        """The saved pins; none when no worker wrote any yet, or (logged) when unreadable: a
        worker then starts from its configured source, as it did before pins were kept."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                str(variant): Pin(
                    str(pin["uri"]), None if pin["source_version"] is None else str(pin["source_version"])
                )
                for variant, pin in raw.items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("event=pin_file_unreadable path=%s error=%s", self.path, type(exc).__name__)
            return {}

    def save(self, pins: dict[str, Pin]) -> None:
        data = {v: {"uri": p.uri, "source_version": p.source_version} for v, p in pins.items()}
        try:
            fd, tmp = tempfile.mkstemp(prefix=".pins-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # the pins still hold in this worker; only a restarted one misses them
            log.warning("event=pin_file_not_written path=%s error=%s", self.path, exc)
