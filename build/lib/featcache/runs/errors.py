"""RunError, in a module of its own low in the layers: the stages that write runs (stage 2's
fit-head) raise it as well as the runs layer that reads them, and imports only go down."""

from featcache.errors import UserError


class RunError(UserError, RuntimeError):
    """A run directory that cannot be used; the message names the run."""
