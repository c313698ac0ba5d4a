"""faces: self-hosted, unsupervised face recognition.

The verb API (detect, align, embed, distance, verify) lives in :mod:`components.api`
and is re-exported here lazily, so importing the package stays cheap (no TensorFlow
until a model is used).
"""

__version__ = "0.1.0"

_API = {"detect", "align", "embed", "distance", "verify"}


def __getattr__(name: str):
    if name in _API:
        from components import api

        return getattr(api, name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")


__all__ = sorted(_API)
