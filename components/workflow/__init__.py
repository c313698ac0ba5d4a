"""Workflow steps: the entry points Airflow's DAGs (dags/) and DVC's stages (dvc.yaml) call.

Each step is a thin I/O wrapper around the engine (detect, embed, identities, report):
it reads its inputs from URIs (a local path or ``s3://``, through
:mod:`components.storage`), writes its outputs under a key that depends only on the
batch id, and returns their URIs. Nothing is keyed by the wall clock, every output is
written whole (temporary name, then rename), and the identity store keys photos by the
sha256 of their bytes, so a step cleared and run again writes the same outputs and adds
no rows.

* :mod:`components.workflow.ingest`: ``face_ingest``: plan (list + shard a batch),
  validate images, detect + align one shard, validate faces, embed, assign to
  identities or the pool, record metrics.
* :mod:`components.workflow.recluster`: ``face_recluster``: re-cluster the unknown
  pool, reconcile with identities, medoids; clustering metrics + t-SNE to MLflow.
* :mod:`components.workflow.retrain`: ``face_retrain``: self-label, train, evaluate,
  register, promote or keep (components.train.retrain), then tell serving to reload.

``python -m components.workflow ingest|recluster|retrain`` runs a whole workflow in
one process (what the DVC stages and ``faces bench ingest`` call).

* :mod:`components.workflow.warm`: the warm step server face_ingest's tasks hand their
  steps to, so TensorFlow and the models stay loaded between tasks.
"""

from __future__ import annotations

__version__ = "1.1.0"


class WorkflowError(Exception):
    """A workflow step cannot go on; the message says why and what to do."""


class BatchRejected(WorkflowError):
    """A batch failed a data-quality check: it is quarantined, nothing is deleted.

    Attributes:
        batch_id: the batch.
        check: which suite failed (``images``, ``faces``, ``embeddings``).
        failures: the failing rows and reasons, as the validation report gives them.
    """

    def __init__(self, batch_id: str, check: str, message: str, failures: list[dict] | None = None):
        super().__init__(message)
        self.batch_id = batch_id
        self.check = check
        self.failures = failures or []
