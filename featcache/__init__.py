"""featcache: cache encoder features once, compare fusion heads in seconds."""

__version__ = "0.1.0"
