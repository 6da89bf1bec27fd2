"""featcache: cache encoder features once, compare fusion heads in seconds.

    import featcache as fc      # the Python API (featcache/api.py): fc.extract_features,
    fc.load("runs/<id>")        # fc.fit_head, fc.study, fc.fine_tune, fc.load, fc.predict

Importing featcache loads nothing else: the API is imported when one of its names is first used,
so `import featcache.encoders.registry` (no torch) stays light.
"""

__version__ = "0.1.0"
__all__ = ["DataError", "DataSpec", "Dataset", "Predictor", "RunError", "evaluate", "export_model", "extract_features", "fine_tune", "fit_head",
           "load", "load_dataset", "predict", "study"]


def __getattr__(name: str):
    if name not in __all__:  # also "api" itself: `from . import api` below then imports the submodule
        raise AttributeError(f"module 'featcache' has no attribute {name!r}")
    from featcache import api

    return getattr(api, name)


def __dir__():
    return sorted([*globals(), *__all__])
