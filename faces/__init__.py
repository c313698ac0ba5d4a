"""faces: the verb API for your own code (numpy in, numpy out).

    import faces

    found = faces.detect(image)                        # [Face], most confident first
    vectors = faces.embed(np.stack([f.crop for f in found]))
    faces.verify("a.jpg", "b.jpg")["same"]

The verbs are defined in :mod:`components.api` (conventions, units and thresholds
are documented there) and re-exported here as plain attributes. This package has
no sub-packages on purpose: in ``components`` a verb exported lazily was shadowed
by the sub-package of the same name (``components.embed``) as soon as that was
imported. Importing it stays cheap: models, and TensorFlow, load on first use.
"""

from components import __version__
from components.api import align, detect, distance, embed, verify

__all__ = ["__version__", "align", "detect", "distance", "embed", "verify"]
