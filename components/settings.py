"""Typed settings read once from ``params.yaml``.

Every step takes the section it needs; nothing here reads the environment except
:func:`load_settings`, which resolves the file location.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Default of the three calibrated cosine thresholds (``cluster.threshold``, ``verify.threshold``,
#: ``identities.assign_threshold``): no value. They are the pretrained local model's calibration,
#: and ``params.yaml`` is the only place their numbers are written (a registered model version
#: carries its own, see :mod:`components.embed.thresholds`); a missing one is an error.
CALIBRATED = math.nan


def _require_calibrated(key: str, value: float) -> None:
    """Refuse a calibrated threshold that was not given (still :data:`CALIBRATED`)."""
    if isinstance(value, (int, float)) and math.isnan(value):
        raise ValueError(
            f"params.yaml {key}: no value given; it is the local model's calibrated threshold "
            "(cosine similarity), set in params.yaml and nowhere else"
        )


@dataclass(frozen=True)
class BaseParams:
    models_dir: Path = Path("models")
    seed: int = 0


@dataclass(frozen=True)
class DetectParams:
    """Face detection (MTCNN) and the quality gates.

    The settings that trade recall for speed are here and nowhere else; every run records
    them (``faces run``'s report.json ``params.detect``, ``faces bench detect``'s JSON):

    * ``mode``: ``fast`` (the engine's detector: a pyramid sized to the photo, packed into
      compiled P-Net calls, R-Net and O-Net on crops of the full photo) or ``package`` (the
      ``mtcnn`` package called on same-sized batches of photos downscaled to ``max_side``,
      the detector before ``fast``; kept to measure against).
    * ``min_face_size``: the smallest face looked for, in pixels of the photo (``package``:
      of the downscaled photo). 32: a face under ``min_face_px`` (40) fails the quality gate
      anyway, and P-Net still finds faces a little under its smallest; looking for 20-px
      faces (the detector before) doubles the detection time of an LFW photo.
    * ``min_face_fraction`` (``fast``): ... and at least this fraction of the photo's shorter
      side (0.033: 36 px in a full-HD photo); 0 looks for
      ``min_face_size`` faces in every photo, at a cost growing with the photo's pixels.
    * ``max_side``: ``fast``: the pyramid's largest level (P-Net's input) is at most this long,
      which caps the scales of very large photos; ``package``: photos are downscaled to this.
    * ``scale_factor``: the pyramid's step (the package's 0.709); closer to 1, more levels.
    * ``stage_thresholds``: P-Net, R-Net and O-Net face thresholds (the package's defaults);
      lower, more candidates reach the next, slower, stage.
    """

    batch_size: int = 32
    mode: str = "fast"
    max_side: int = 1280
    min_face_size: int = 32
    min_face_fraction: float = 0.033
    scale_factor: float = 0.709
    stage_thresholds: tuple[float, ...] = (0.6, 0.7, 0.8)
    min_confidence: float = 0.95
    min_face_px: int = 40
    min_blur: float = 0.005
    max_pixels: int = 40_000_000
    # A photo with no face upright is tried turned by these degrees (counter-clockwise), in order.
    try_rotations: tuple[int, ...] = (90, 270)

    def __post_init__(self) -> None:
        wrong = [turn for turn in self.try_rotations if turn not in (90, 180, 270)]
        if wrong:
            raise ValueError(f"params.yaml [DetectParams] try_rotations: turns are 90, 180 or 270 degrees; got {wrong}")
        if self.mode not in ("fast", "package"):
            raise ValueError(f"params.yaml [DetectParams] mode: fast or package; got {self.mode!r}")
        if len(self.stage_thresholds) != 3:
            raise ValueError("params.yaml [DetectParams] stage_thresholds: three (P-Net, R-Net, O-Net)")
        if not 0 < self.scale_factor < 1 or self.min_face_size < 12 or not 0 <= self.min_face_fraction < 1:
            raise ValueError("params.yaml [DetectParams]: scale_factor in (0, 1), min_face_size >= 12 (P-Net's window), "
                             "min_face_fraction in [0, 1)")


@dataclass(frozen=True)
class EmbedParams:
    batch_size: int = 64


@dataclass(frozen=True)
class ClusterParams:
    threshold: float = CALIBRATED  # the local model's calibration: params.yaml only
    knn: int = 30
    knn_above: int = 5000
    iterations: int = 30
    min_identity_size: int = 2

    def __post_init__(self) -> None:
        _require_calibrated("cluster.threshold", self.threshold)


@dataclass(frozen=True)
class VerifyParams:
    threshold: float = CALIBRATED  # the local model's calibration: params.yaml only

    def __post_init__(self) -> None:
        _require_calibrated("verify.threshold", self.threshold)


@dataclass(frozen=True)
class IdentitiesParams:
    """The identity life cycle: incremental assignment, the unknown pool, re-clustering.

    Attributes:
        assign_threshold: a new face joins the identity whose medoid is most similar
            (cosine) when the similarity is at least this; otherwise it waits in the pool.
            The local model's calibration: no default, params.yaml gives it.
        recluster_every_s: window T: the pool is re-clustered when this many seconds
            have passed since the last re-clustering (and new faces wait in it).
        recluster_pool_size: ... or as soon as this many faces have joined the pool
            since the last re-clustering.
        medoid_sample_above: identities with more members get an approximate medoid,
            computed on a seeded sample of this many members.
    """

    assign_threshold: float = CALIBRATED  # the local model's calibration: params.yaml only
    recluster_every_s: float = 3600.0
    recluster_pool_size: int = 1000
    medoid_sample_above: int = 5000

    def __post_init__(self) -> None:
        _require_calibrated("identities.assign_threshold", self.assign_threshold)


@dataclass(frozen=True)
class RunParams:
    demo_people: int = 40
    demo_min_images: int = 10
    demo_max_images: int = 20
    out_dir: Path = Path("runs/demo")


@dataclass(frozen=True)
class WorkflowParams:
    """The Airflow / DVC workflow steps (components/workflow).

    Attributes:
        work_dir: default work area for batch manifests, shard outputs and crops, when
            ``FACES_WORK_URI`` (a folder or an ``s3://bucket/prefix``) is not set.
        shard_size: photos per detect / embed task (one mapped task each).
        tsne_max_faces: faces drawn in the re-clustering t-SNE plot (a seeded sample above).
    """

    work_dir: Path = Path("runs/workflow")
    shard_size: int = 256
    tsne_max_faces: int = 2000


@dataclass(frozen=True)
class ServeParams:
    """The BentoML service (serving/, components/serving).

    Attributes:
        require_api_key: refuse to start without ``FACES_API_KEY`` and answer 401 to
            requests without the key in the ``X-API-Key`` header.
        max_request_bytes: largest request body accepted (413 above).
        max_pixels: largest photo, width x height, accepted (413 above; read from the header).
        max_side: photos are shrunk to this longer side before detection and alignment.
        max_faces: faces analysed per photo (the most confident ones).
        max_photos: photos (or crops) per /embed request.
        model_alias: registry alias served.
        poll_s: seconds between checks for a newly promoted model (0: only POST /reload).
        store_refresh_s: seconds between re-reads of the identity store's medoids.
        batch_max_size: photos per adaptive batch of the embedder service.
        batch_max_latency_ms: BentoML sheds queued requests (drops the connection) whose estimated
            wait exceeds this; set high so that only the request timeout bounds waiting.
        open_paths: paths answered without the key besides ``/healthz`` and ``/readyz``
            (e.g. ``/metrics`` for a Prometheus that cannot send headers); default none.
    """

    require_api_key: bool = True
    max_request_bytes: int = 16_000_000
    max_pixels: int = 25_000_000
    max_side: int = 2048
    max_faces: int = 20
    max_photos: int = 16
    model_alias: str = "champion"
    poll_s: float = 30.0
    store_refresh_s: float = 10.0
    batch_max_size: int = 32
    batch_max_latency_ms: int = 600_000
    open_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class StorageParams:
    """Object storage (components/storage): local folders by default, S3 in production.

    Endpoint and keys come from the environment (S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, optional S3_REGION), never from here.

    Attributes:
        connect_timeout_s: seconds to wait for a connection to the S3 server.
        read_timeout_s: seconds to wait for an answer (large objects stream within it).
        retries: HTTP retries on connection errors and 5xx answers.
    """

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    retries: int = 2


@dataclass(frozen=True)
class ValidateParams:
    """Great Expectations suites (components/validate) and the quarantine.

    Attributes:
        docs: when a Data Docs site is written: on_failure, always or never.
        docs_dir: where Data Docs sites go, ``<docs_dir>/<batch id>/<suite>/``.
        quarantine_uri: where failed batches are copied (a folder or s3://bucket/prefix);
            ``FACES_QUARANTINE_URI`` overrides it.
        image_min_side: smallest accepted width and height, px.
        image_max_side: largest accepted width and height, px.
        image_max_pixels: largest width x height (larger files are not even decoded).
        image_formats: accepted formats, as Pillow names them.
        face_crop_size: side of the aligned crops, px.
        face_min_usable_share: the share of faces that must pass the detector's confidence
            gate, and the share that must pass its blur gate.
        face_landmark_tolerance: a landmark may lie this fraction of the box's shorter
            side outside the box.
        face_landmarks_inside_share: the share of faces whose landmarks must lie inside the
            box; MTCNN puts a landmark outside on some tilted faces, so a few are normal.
        embedding_dim: dimension of the embeddings.
        embedding_norm_tolerance: allowed distance of an embedding's L2 norm from 1.
        embedding_decimals: vectors whose values all agree within 10^-decimals are duplicates.
        cluster_min_size: smallest identity.
        cluster_max_share: largest share of all faces one identity may hold.
        cluster_share_min_faces: the share check applies from this many faces on.
    """

    docs: str = "on_failure"
    docs_dir: Path = Path("runs/validation")
    quarantine_uri: str = "runs/quarantine"
    image_min_side: int = 20
    image_max_side: int = 20000
    image_max_pixels: int = 40_000_000
    image_formats: tuple = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "TGA", "HEIF", "AVIF")
    face_crop_size: int = 150
    face_min_usable_share: float = 0.5
    face_landmark_tolerance: float = 0.1
    face_landmarks_inside_share: float = 0.95
    embedding_dim: int = 128
    embedding_norm_tolerance: float = 0.001
    embedding_decimals: int = 6
    cluster_min_size: int = 2
    cluster_max_share: float = 0.5
    cluster_share_min_faces: int = 100


@dataclass(frozen=True)
class RetrainParams:
    """Self-labelled retraining (components/train/retrain.py, ``faces retrain``, DAG ``face_retrain``).

    Attributes:
        min_faces: identities with fewer faces give no training labels.
        cohesion_slack: ... nor those whose members' mean cosine similarity to the medoid falls
            more than this below the model's assign threshold (a threshold of the model's own
            scale: a re-fitted head spreads similarities differently from the pretrained one).
        promote_metric: held-out figure that decides promotion (components.train.retrain.METRICS):
            verification on the held-out evidence pairs (``accuracy``, ``auc``, ``tar_at_far_1e-3``)
            or clustering of the identities held out whole (``pairwise_f1``, ``bcubed_f1``).
        promote_on: which held-out evidence decides (components.train.retrain.EVIDENCE):
            ``future`` photos of known people (what the store meets every day: the people
            of a photo library come back), ``unseen`` people or ``all`` pairs.
        promote_margin: the challenger becomes champion only when it beats the champion's
            ``promote_metric`` on the ``promote_on`` pairs by at least this ...
        guard_margin: ... and falls by no more than this on the other verification figure and on
            either kind of evidence apart (people never trained on guard against a head that
            only learned the store's people) ...
        max_p_value: ... and is right on significantly more evidence pairs than the champion
            (McNemar's exact test on the pairs the two models decide differently).
        loss: cosine loss of the head re-fit (components.train.head.HEAD_LOSSES).
        learning_rate: peak Adam step size (warm-up, then cosine decay to zero).
        steps: optimiser steps of the head re-fit.
        anchor: weight of the pull of the head towards the champion's.
        future_share: share of each identity's newest faces held out as "future photos".
        unseen_share: share of identities held out whole ("people never trained on").
        stream_batches: batches the LFW stream is fed in through the identity life cycle.
        labels_remote: DVC remote (a folder or ``s3://bucket/prefix``) each cycle's label set
            is pushed to under its md5 (DVC's own layout); "" keeps it only in MLflow.
            ``$FACES_LABELS_REMOTE`` overrides it (``make up`` points it at the stack's S3).
    """

    min_faces: int = 5
    cohesion_slack: float = 0.045
    promote_metric: str = "accuracy"
    promote_on: str = "future"
    promote_margin: float = 0.002
    guard_margin: float = 0.02
    max_p_value: float = 0.05
    loss: str = "cosface"
    learning_rate: float = 1e-3
    steps: int = 300
    anchor: float = 3.0
    future_share: float = 0.2
    unseen_share: float = 0.2
    stream_batches: int = 20
    labels_remote: str = "runs/dvc-remote"


@dataclass(frozen=True)
class UiParams:
    """The people page (components/ui, ``faces ui``): review and correct identities in a browser.

    Secrets come from the environment, never from here: ``FACES_API_KEY`` (the serving
    key) and ``FACES_UI_PASSWORD`` are the two ways to sign in; ``FACES_UI_SECRET`` signs
    the session cookies (a random one per start when unset: sessions end with the server).

    Attributes:
        host, port: where ``faces ui`` listens (loopback by default).
        people_per_page: people on one screen of the people page.
        faces_per_page: faces on one screen of a person page.
        clusters_per_page: unknown-pool clusters on one screen of the unknown-faces page.
        faces_per_cluster: faces shown per unknown cluster.
        suggestions: nearest people suggested for each unknown cluster.
        thumbnail_px: side of the face thumbnails (from the stored crops).
        thumbnail_cache: thumbnails kept in memory (least recently used go first).
        photo_max_side: photos are shown at most this large (longer side, px).
        session_max_age_s: a session ends after this many seconds.
        secure_cookie: send the session cookie over HTTPS only (behind a TLS proxy).
    """

    host: str = "127.0.0.1"
    port: int = 8600
    people_per_page: int = 60
    faces_per_page: int = 60
    clusters_per_page: int = 20
    faces_per_cluster: int = 8
    suggestions: int = 3
    thumbnail_px: int = 112
    thumbnail_cache: int = 20000
    photo_max_side: int = 1024
    session_max_age_s: int = 43200
    secure_cookie: bool = False

    def __post_init__(self) -> None:
        for name in ("port", "people_per_page", "faces_per_page", "clusters_per_page", "faces_per_cluster",
                     "suggestions", "thumbnail_px", "thumbnail_cache", "photo_max_side", "session_max_age_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"params.yaml ui.{name}: must be at least 1; got {getattr(self, name)}")


@dataclass(frozen=True)
class Settings:
    base: BaseParams = field(default_factory=BaseParams)
    detect: DetectParams = field(default_factory=DetectParams)
    embed: EmbedParams = field(default_factory=EmbedParams)
    cluster: ClusterParams = field(default_factory=ClusterParams)
    verify: VerifyParams = field(default_factory=VerifyParams)
    identities: IdentitiesParams = field(default_factory=IdentitiesParams)
    run: RunParams = field(default_factory=RunParams)
    workflow: WorkflowParams = field(default_factory=WorkflowParams)
    serve: ServeParams = field(default_factory=ServeParams)
    retrain: RetrainParams = field(default_factory=RetrainParams)
    storage: StorageParams = field(default_factory=StorageParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    ui: UiParams = field(default_factory=UiParams)

    @property
    def model_path(self) -> Path:
        """Where the converted Keras embedder lives."""
        return self.base.models_dir / "face_recognition_net.keras"


def _section(cls: type, raw: dict[str, Any] | None, root: Path) -> Any:
    """Build one section, coercing YAML scalars and resolving relative paths against root."""
    raw = dict(raw or {})
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(f"params.yaml [{cls.__name__}]: unknown keys {sorted(unknown)}")
    values = {}
    for name, f in known.items():
        default = f.default if f.default is not MISSING else f.default_factory()
        value = raw.get(name, default)
        if value is None:
            raise ValueError(f"params.yaml [{cls.__name__}] {name}: no value given")
        if isinstance(default, Path):
            value = Path(value)
            value = value if value.is_absolute() else root / value
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"params.yaml [{cls.__name__}] {name}: expected true or false, got {value!r}")
        elif isinstance(default, int):
            number = float(value) if not isinstance(value, bool) else None
            if number is None or not number.is_integer():
                raise ValueError(f"params.yaml [{cls.__name__}] {name}: expected a whole number, got {value!r}")
            value = int(number)
        else:
            value = type(default)(value)
        values[name] = value
    return cls(**values)


_SECTIONS = {"base": BaseParams, "detect": DetectParams, "embed": EmbedParams,
             "cluster": ClusterParams, "verify": VerifyParams, "identities": IdentitiesParams, "run": RunParams,
             "workflow": WorkflowParams, "serve": ServeParams, "retrain": RetrainParams,
             "storage": StorageParams, "validate": ValidateParams, "ui": UiParams}


def load_settings(path: str | Path | None = None) -> Settings:
    """Read ``params.yaml`` into :class:`Settings`.

    Args:
        path: the YAML file; defaults to ``$FACES_PARAMS`` or the project's ``params.yaml``.
            Relative paths inside it resolve against the file's directory.

    Returns:
        The settings; sections or keys missing from the file keep their defaults, except
        the calibrated thresholds (``cluster.threshold``, ``verify.threshold``,
        ``identities.assign_threshold``), which have none.

    Raises:
        ValueError: on an unknown section or key (a typo should not pass silently), or a
            missing calibrated threshold.
    """
    chosen = path or os.environ.get("FACES_PARAMS")
    path = Path(chosen or PROJECT_ROOT / "params.yaml")
    if chosen and not path.exists():
        raise FileNotFoundError(f"parameters file {path} does not exist")
    raw = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
    root = path.resolve().parent
    return Settings(**{name: _section(cls, raw.get(name), root) for name, cls in _SECTIONS.items()})
