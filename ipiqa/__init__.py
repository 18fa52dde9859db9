__version__ = "0.1.0"

def __getattr__(name):  # `from ipiqa import Scorer`, imported on first use so that `import ipiqa` stays light
    if name == 'Scorer':
        from .scoring import Scorer
        return Scorer
    raise AttributeError(f"module 'ipiqa' has no attribute {name!r}")
