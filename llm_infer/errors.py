"""Errors a user sees as one line (CLI exit code 2), never as a traceback."""


class UserError(Exception):
    """A mistake by the user: shown as one line, CLI exit code 2."""


class ConfigError(UserError):
    """An invalid configuration key or value."""


class WorkerError(RuntimeError):
    """A worker process died or stopped answering; the message names the rank."""
