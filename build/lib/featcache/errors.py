"""UserError: what featcache raises for a problem with its input (a file and row, an option, a
cache, a run), which the command line prints as one line; anything else is a bug with a traceback."""


class UserError(Exception):
    """A problem the user can fix, described in one line."""
