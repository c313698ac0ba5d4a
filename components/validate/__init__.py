"""Data validation with Great Expectations 1.x: suites for images, faces, embeddings and clusters.

```python
from components import validate

table = validate.image_table(paths)                # or storage keys, or (key, bytes) pairs
report = validate.validate_images(table, batch_id="batch-7")
if not report.success:
    validate.quarantine("photos/batch-7", report.message(), report=report)   # copies; deletes nothing
    validate.log_report(report)                    # Data Docs site -> MLflow artifacts (active run)
    report.raise_if_failed()                       # ValidationFailed: which rows and why
```

Great Expectations is imported only when a suite runs (it takes seconds).
"""

from __future__ import annotations

from components.validate.quarantine import quarantine
from components.validate.report import Check, ValidationFailed, ValidationReport, log_report, run_suite
from components.validate.suites import validate_clusters, validate_embeddings, validate_faces, validate_images
from components.validate.tables import (
    cluster_table,
    cluster_table_from_store,
    describe_image,
    embedding_table,
    face_table,
    face_table_from_arrays,
    image_table,
    landmark_outside,
)

__version__ = "1.0.0"

__all__ = [
    "Check",
    "ValidationFailed",
    "ValidationReport",
    "__version__",
    "cluster_table",
    "cluster_table_from_store",
    "describe_image",
    "embedding_table",
    "face_table",
    "face_table_from_arrays",
    "image_table",
    "landmark_outside",
    "log_report",
    "quarantine",
    "run_suite",
    "validate_clusters",
    "validate_embeddings",
    "validate_faces",
    "validate_images",
]
