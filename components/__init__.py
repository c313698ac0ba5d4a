"""components: the steps of self-hosted, unsupervised face recognition.

One sub-package per versioned step (images, detect, embed, cluster, identities,
report, ...). The verb API (detect, align, embed, distance, verify) is the
top-level package :mod:`faces` (defined in :mod:`components.api`): it is not
re-exported here, where the sub-packages ``components.detect`` and
``components.embed`` would shadow the verbs of the same name.
"""

__version__ = "0.1.0"
