"""Serving: the logic behind the BentoML service in ``serving/service.py``.

Pure cores, each usable without BentoML:

* :mod:`~components.serving.errors`: :class:`ServingError` (an HTTP status, a code and a
  sentence) and the JSON error body;
* :mod:`~components.serving.requests`: API-key, content-type and size checks, safe decoding;
* :mod:`~components.serving.model`: :class:`ModelHolder`, the champion embedder, swapped
  atomically when a new one is promoted;
* :mod:`~components.serving.engine`: :class:`FaceEngine`, detect + align + embed for a
  batch of photos, one lock around the models;
* :mod:`~components.serving.identities`: :class:`IdentityIndex`, the identity store's
  medoids for ``/identify``;
* :mod:`~components.serving.operations`: verify / identify / embed answers from faces;
* :mod:`~components.serving.gate`: the ASGI middleware in front of the public service
  (key, limits, multipart checks, ``/healthz`` and ``/readyz``).
* :mod:`~components.serving.launch`: start / stop a real ``bentoml serve`` (tests, benchmark).
"""

__version__ = "1.0.0"
