"""featcache: cache encoder features once, compare fusion heads in seconds.

    import featcache as fc      # the Python API (featcache/api.py): fc.extract, fc.fit_head,
    fc.load("runs/<id>")        # fc.ablate, fc.finetune, fc.predict, fc.export, fc.load ...

Importing featcache loads nothing else: the API is imported when one of its names is first used,
so `import featcache.encoders.registry` (no torch) stays light.
"""

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "DataSpec", "Dataset", "Predictor", "RunError", "ablate", "benchmark", "check_data",
           "demo", "evaluate", "export", "export_model", "extract", "extract_features", "fine_tune", "finetune", "fit_head",
           "learning_curve", "load", "load_dataset", "make_data", "merge_shards", "predict", "report"]


def __getattr__(name: str):
    if name not in __all__:  # also "api" itself: `from . import api` below then imports the submodule
        raise AttributeError(f"module 'featcache' has no attribute {name!r}")
    from featcache import api

    return getattr(api, name)


def __dir__():
    return sorted([*globals(), *__all__])
