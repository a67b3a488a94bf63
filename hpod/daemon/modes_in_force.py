"""The daemon's modes in force and its default mode.

The modes are the packaged ones changed or extended by ``HPOD_MODES_FILE`` (`hpod.modes`),
replaced as a whole when SIGHUP reloads them. The default mode is what a study created without
a `mode` gets; `mode.set` without a study changes it, and it is kept in
``<data_dir>/default-mode`` so that it survives a restart. A stored default that names a mode
the daemon no longer knows, or none at all, is ``balanced``.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from hpod.errors import RequestRejected
from hpod.modes import Mode, load_modes

log = structlog.get_logger("hpod.modes")

#: The default mode of a daemon that was never told another.
BUILTIN_DEFAULT = "balanced"


class ModesInForce:
    """The modes the daemon knows, by name, and its default mode."""

    def __init__(self, data_dir: Path, modes: dict[str, Mode] | None = None) -> None:
        self._file = data_dir / "default-mode"
        self.modes: dict[str, Mode] = load_modes() if modes is None else modes
        self.default = self._stored_default()

    def _stored_default(self) -> str:
        """The default mode last set by `mode.set` without a study (kept across restarts)."""
        try:
            mode = self._file.read_text().strip()
        except OSError:
            return BUILTIN_DEFAULT
        return mode if mode in self.modes else BUILTIN_DEFAULT

    def check(self, mode: str, field: str) -> None:
        """Refuse a mode the daemon does not know, naming the request's `field`."""
        if mode not in self.modes:
            known = ", ".join(sorted(self.modes))
            raise RequestRejected("invalid", field, f"unknown mode {mode!r} (known: {known})")

    def set_default(self, mode: str) -> None:
        """Make `mode` (a known one) the default, now and after a restart."""
        self.check(mode, "mode")
        self.default = mode
        self._file.write_text(mode + "\n")

    def in_force(self, study: str, mode: str | None) -> tuple[str, Mode]:
        """The mode a study runs under: its own (`mode`, as stored), or the default when it
        has none or has one removed from the modes file since."""
        name = mode or self.default
        if name not in self.modes:
            log.warning("study.mode_unknown", study=study, mode=name, using=self.default)
            name = self.default
        return name, self.modes[name]
