"""RunError, in a module of its own low in the layers: the stages that write runs (stage 2's
fit-head) raise it as well as the runs layer that reads them, and imports only go down."""


class RunError(RuntimeError):
    """A run directory that cannot be used; the message names the run."""
