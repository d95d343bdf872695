"""Typed errors. Each maps to one CLI exit code (DESIGN §7); the CLI prints one line."""

from __future__ import annotations

# Exit codes of the CLI contract.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_CONTEXT = 3
EXIT_NO_MANAGER = 4
EXIT_REFUSED = 5


class EvicctlError(Exception):
    """Base of every error evicctl raises on purpose."""

    exit_code = EXIT_ERROR


class UsageError(EvicctlError):
    """A bad argument: unknown tier, codec, option value."""

    exit_code = EXIT_USAGE


class UnknownNameError(UsageError, KeyError):
    """A name not in a registry; the message lists the valid names."""

    def __init__(self, what: str, name: str, valid: list[str] | tuple[str, ...]) -> None:
        self.what, self.name, self.valid = what, name, list(valid)
        super().__init__(f"unknown {what} {name!r}; valid: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class NoSuchContextError(EvicctlError):
    """The context id is not in the store."""

    exit_code = EXIT_NO_CONTEXT

    def __init__(self, context_id: str) -> None:
        self.context_id = context_id
        super().__init__(f"no such context {context_id!r}")


class NoManagerError(EvicctlError):
    """No manager heartbeat, or the manager did not answer in time."""

    exit_code = EXIT_NO_MANAGER


class RefusedError(EvicctlError):
    """The manager refused a command (e.g. a pin that cannot fit)."""

    exit_code = EXIT_REFUSED


class StoreError(EvicctlError):
    """The database is missing, corrupt, locked or not accessible."""


class CorruptDataError(EvicctlError):
    """A stored KV failed its checksum or could not be decoded; it is never served."""


class ModelNotInstalledError(EvicctlError):
    """The packaged model or data is not installed; the message names the install command."""
