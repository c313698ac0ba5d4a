"""The four suites: images, faces, embeddings, clustering output.

Each ``validate_*`` builds its expectations from :class:`components.settings.ValidateParams`
(thresholds in params.yaml, ``validate:``), runs them with Great Expectations on the
table (:mod:`components.validate.tables` builds them) and returns a
:class:`~components.validate.report.ValidationReport` naming every failing row and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from components.settings import DetectParams, ValidateParams
from components.validate.report import Check, ValidationReport, run_suite

__all__ = ["validate_clusters", "validate_embeddings", "validate_faces", "validate_images"]


def _expect(name: str, **kwargs):
    """A deferred GE expectation (GE is imported only when a suite runs)."""

    def build(**extra):
        import great_expectations as gx

        return getattr(gx.expectations, name)(**kwargs, **extra)

    return build


def _params(params: ValidateParams | None) -> ValidateParams:
    if params is not None:
        return params
    from components.settings import load_settings

    return load_settings().validate


def _others(table, column: str, value: Any, row: Any, id_column: str, limit: int = 3) -> str:
    """The other rows holding the same value (for duplicate reasons)."""
    same = [str(other) for other in table.loc[table[column] == value, id_column] if other != row]
    more = f" and {len(same) - limit} more" if len(same) > limit else ""
    return ", ".join(same[:limit]) + more


def _lookup(table, id_column: str, row_id: Any, column: str) -> Any:
    """Another column of the failing row (GE's failure list holds only the id and the checked column)."""
    values = table.loc[table[id_column] == row_id, column]
    return values.iloc[0] if len(values) else None


def _run(suite: str, table, checks, id_column: str, params: ValidateParams, batch_id, docs_dir, docs):
    return run_suite(suite, table, checks, id_column, batch_id=batch_id,
                     docs_dir=params.docs_dir if docs_dir is None else docs_dir,
                     docs=params.docs if docs is None else docs)


def validate_images(table, params: ValidateParams | None = None, *, batch_id: str | None = None,
                    docs_dir: str | os.PathLike[str] | None = None, docs: str | None = None) -> ValidationReport:
    """The image suite: decodable, dimensions within limits, allowed formats, no duplicate content.

    Args:
        table: :func:`~components.validate.tables.image_table` output (columns ``key``,
            ``sha256``, ``format``, ``width``, ``height``, ``pixels``, ``error``).
        params: thresholds; default params.yaml's ``validate:``.
        batch_id: keys the Data Docs site; default a hash of the table.
        docs_dir: where Data Docs go; default ``params.docs_dir``.
        docs: ``on_failure`` / ``always`` / ``never``; default ``params.docs``.

    Returns:
        The report; an empty batch fails (``not_empty``).
    """
    p = _params(params)
    if "pixels" not in table.columns:
        table = table.assign(pixels=table["width"] * table["height"])
    formats = sorted(p.image_formats)
    low, high = p.image_min_side, p.image_max_side
    checks = [
        Check("not_empty", _expect("ExpectTableRowCountToBeBetween", min_value=1),
              lambda value, row, t: "the batch holds no image", "A batch must hold at least one photo."),
        Check("decodable", _expect("ExpectColumnValuesToBeNull", column="error"),
              lambda value, row, t: f"cannot be decoded ({value})",
              "Every file decodes as an image (empty, truncated, non-image and unreadable files fail)."),
        Check("format", _expect("ExpectColumnValuesToBeInSet", column="format", value_set=formats),
              lambda value, row, t: f"format {value} is not accepted (accepted: {', '.join(formats)})",
              f"Image formats accepted: {', '.join(formats)}."),
        Check("width", _expect("ExpectColumnValuesToBeBetween", column="width", min_value=low, max_value=high),
              lambda value, row, t: f"width {value} px is outside {low}-{high} px", f"Width within {low}-{high} px."),
        Check("height", _expect("ExpectColumnValuesToBeBetween", column="height", min_value=low, max_value=high),
              lambda value, row, t: f"height {value} px is outside {low}-{high} px", f"Height within {low}-{high} px."),
        Check("pixels", _expect("ExpectColumnValuesToBeBetween", column="pixels", max_value=p.image_max_pixels),
              lambda value, row, t: f"{value:,} pixels is above the limit of {p.image_max_pixels:,} "
                                    "(possible decompression bomb; not decoded)",
              f"At most {p.image_max_pixels:,} pixels (decompression bombs)."),
        Check("duplicate", _expect("ExpectColumnValuesToBeUnique", column="sha256"),
              lambda value, row, t: f"same content as {_others(t, 'sha256', value, row.get('key'), 'key')}",
              "No two files with the same content (sha256)."),
    ]
    return _run("images", table, checks, "key", p, batch_id, docs_dir, docs)


def validate_faces(table, params: ValidateParams | None = None, gates: DetectParams | None = None, *,
                   batch_id: str | None = None, docs_dir: str | os.PathLike[str] | None = None,
                   docs: str | None = None) -> ValidationReport:
    """The face suite: crop size, landmarks inside the box, sane values, and enough usable faces.

    Structural checks hold for every face: crops of ``face_crop_size`` x ``face_crop_size``
    x 3, a box with positive sides, landmarks inside it (within ``face_landmark_tolerance``),
    confidence in [0, 1], a finite non-negative blur score. Quality is a batch property:
    faces below the detector's gates are normal (background faces), so at least
    ``face_min_usable_share`` of the faces must reach ``gates.min_confidence`` and as many
    ``gates.min_blur``; when a batch misses that, every face below the gate is listed.
    An empty table (photos without faces) passes.

    Args:
        table: :func:`~components.validate.tables.face_table` output.
        params: thresholds; default params.yaml's ``validate:``.
        gates: the detector's quality gates; default params.yaml's ``detect:``.
        batch_id, docs_dir, docs: as :func:`validate_images`.
    """
    p = _params(params)
    if gates is None:
        from components.settings import load_settings

        gates = load_settings().detect
    if "face" not in table.columns:
        table = table.assign(face=[f"{key}#{index}" for key, index in zip(table["key"], table["face_index"])])
    if "landmarks_inside" not in table.columns and "landmarks_inside_box" in table.columns:
        table = table.assign(landmarks_inside=table["landmarks_inside_box"])
    size, share = p.face_crop_size, p.face_min_usable_share

    def outside(value, row, t):
        if "landmark_outside" in t.columns:
            far = t.loc[t["face"] == row.get("face"), "landmark_outside"]
            if len(far) and far.iloc[0] == far.iloc[0]:  # not NaN
                return f"a landmark lies {far.iloc[0]:.0%} of the box size outside the box"
        return "the landmarks are not inside the face box (or not finite)"

    checks = [
        Check("crop_height", _expect("ExpectColumnValuesToBeInSet", column="crop_height", value_set=[size]),
              lambda value, row, t: f"crop is {value} px high, not {size}", f"Aligned crops are {size} px high."),
        Check("crop_width", _expect("ExpectColumnValuesToBeInSet", column="crop_width", value_set=[size]),
              lambda value, row, t: f"crop is {value} px wide, not {size}", f"Aligned crops are {size} px wide."),
        Check("box", _expect("ExpectColumnValuesToBeBetween", column="box_w", min_value=0, strict_min=True),
              lambda value, row, t: f"face box width {value} is not positive", "Face boxes have a positive width."),
        Check("box_height", _expect("ExpectColumnValuesToBeBetween", column="box_h", min_value=0, strict_min=True),
              lambda value, row, t: f"face box height {value} is not positive", "Face boxes have a positive height."),
        Check("landmarks_inside", _expect("ExpectColumnValuesToBeInSet", column="landmarks_inside", value_set=[True],
                                          mostly=p.face_landmarks_inside_share),
              outside, f"The five landmarks lie inside the box (tolerance {p.face_landmark_tolerance:.0%} of its side) "
                       f"for at least {p.face_landmarks_inside_share:.0%} of the faces."),
        Check("confidence_range", _expect("ExpectColumnValuesToBeBetween", column="confidence", min_value=0,
                                          max_value=1),
              lambda value, row, t: f"confidence {value} is outside [0, 1]", "Detector confidence lies in [0, 1]."),
        Check("confidence", _expect("ExpectColumnValuesToBeBetween", column="confidence",
                                    min_value=gates.min_confidence, mostly=share),
              lambda value, row, t: f"confidence {value:.3f} is below {gates.min_confidence} "
                                    f"(fewer than {share:.0%} of the batch's faces pass)",
              f"At least {share:.0%} of faces reach confidence {gates.min_confidence}."),
        Check("blur_range", _expect("ExpectColumnValuesToBeBetween", column="blur", min_value=0),
              lambda value, row, t: f"blur score {value} is negative", "Blur scores are not negative."),
        Check("blur", _expect("ExpectColumnValuesToBeBetween", column="blur", min_value=gates.min_blur, mostly=share),
              lambda value, row, t: f"blur score {value:.4f} is below {gates.min_blur}: blurry "
                                    f"(fewer than {share:.0%} of the batch's faces are sharp)",
              f"At least {share:.0%} of faces reach blur score {gates.min_blur}."),
        Check("confidence_finite", _expect("ExpectColumnValuesToNotBeNull", column="confidence"),
              lambda value, row, t: "confidence is missing or NaN", "Every face has a confidence."),
        Check("blur_finite", _expect("ExpectColumnValuesToNotBeNull", column="blur"),
              lambda value, row, t: "blur score is missing or NaN", "Every face has a blur score."),
    ]
    if "crop_channels" in table.columns:
        checks.insert(2, Check("crop_channels", _expect("ExpectColumnValuesToBeInSet", column="crop_channels",
                                                        value_set=[3]),
                               lambda value, row, t: f"crop has {value} channel(s), not 3 (RGB)", "Crops are RGB."))
    return _run("faces", table, checks, "face", p, batch_id, docs_dir, docs)


def validate_embeddings(vectors, ids: Sequence[Any] | None = None, params: ValidateParams | None = None, *,
                        batch_id: str | None = None, docs_dir: str | os.PathLike[str] | None = None,
                        docs: str | None = None) -> ValidationReport:
    """The embedding suite: dimension, finite values, unit norm, no duplicate vectors, unique ids.

    Args:
        vectors: (N, D) array, or a sequence of 1-D vectors.
        ids: each vector's id; default 0..N-1.
        params, batch_id, docs_dir, docs: as :func:`validate_images`.
    """
    from components.validate.tables import embedding_table

    p = _params(params)
    table = embedding_table(vectors, ids, decimals=p.embedding_decimals)
    dim, tol = p.embedding_dim, p.embedding_norm_tolerance
    checks = [
        Check("dimension", _expect("ExpectColumnValuesToBeInSet", column="dim", value_set=[dim]),
              lambda value, row, t: f"has {value} dimensions, not {dim}", f"Embeddings have {dim} dimensions."),
        Check("finite", _expect("ExpectColumnValuesToBeInSet", column="finite", value_set=[True]),
              lambda value, row, t: "holds NaN or infinite values", "Every value is finite."),
        Check("unit_norm", _expect("ExpectColumnValuesToBeBetween", column="norm", min_value=1 - tol,
                                   max_value=1 + tol),
              lambda value, row, t: f"L2 norm {value:.6f} is not 1 (tolerance {tol})",
              f"Embeddings are L2-normalised (|norm - 1| <= {tol})."),
        Check("duplicate", _expect("ExpectColumnValuesToBeUnique", column="vector_key"),
              lambda value, row, t: f"same vector as {_others(t, 'vector_key', value, row.get('id'), 'id')}",
              f"No two faces have the same vector (every value within 1e-{p.embedding_decimals})."),
        Check("unique_id", _expect("ExpectColumnValuesToBeUnique", column="id"),
              lambda value, row, t: "the id appears more than once", "Ids are unique."),
    ]
    return _run("embeddings", table, checks, "id", p, batch_id, docs_dir, docs)


def validate_clusters(table, params: ValidateParams | None = None, *, batch_id: str | None = None,
                      docs_dir: str | os.PathLike[str] | None = None, docs: str | None = None) -> ValidationReport:
    """The clustering suite: no identity with two faces of one photo (cannot-link), sizes, each face once.

    Args:
        table: :func:`~components.validate.tables.cluster_table` output (``face_id``,
            ``identity_id`` (null: unknown pool), ``photo_id``, ``identity_size``,
            ``identity_share``).
        params, batch_id, docs_dir, docs: as :func:`validate_images`.
    """
    p = _params(params)
    min_size, max_share = p.cluster_min_size, p.cluster_max_share

    def cannot_link(value, row, t):
        identity, photo = row.get("identity_id"), row.get("photo_id")
        same = t.loc[(t["identity_id"] == identity) & (t["photo_id"] == photo), "face_id"]
        others = ", ".join(str(face) for face in same if face != row.get("face_id"))
        return f"identity {identity} also holds face {others} of the same photo {photo} (cannot-link)"

    checks = [
        Check("cannot_link", _expect("ExpectCompoundColumnsToBeUnique", column_list=["photo_id", "identity_id"],
                                     ignore_row_if="any_value_is_missing"),
              cannot_link, "Two faces of one photo are never one identity."),
        Check("face_once", _expect("ExpectColumnValuesToBeUnique", column="face_id"),
              lambda value, row, t: "the face is listed more than once", "Each face appears once."),
        Check("min_size", _expect("ExpectColumnValuesToBeBetween", column="identity_size", min_value=min_size),
              lambda value, row, t: f"identity {_lookup(t, 'face_id', row.get('face_id'), 'identity_id')} has "
                                    f"{value} face(s), fewer than {min_size}",
              f"Identities hold at least {min_size} faces."),
    ]
    if len(table) >= p.cluster_share_min_faces:
        checks.append(Check(
            "max_share", _expect("ExpectColumnValuesToBeBetween", column="identity_share", max_value=max_share),
            lambda value, row, t: f"identity {_lookup(t, 'face_id', row.get('face_id'), 'identity_id')} holds "
                                  f"{value:.0%} of all faces, above "
                                  f"{max_share:.0%} (a collapsed embedder or threshold?)",
            f"No identity holds more than {max_share:.0%} of the faces."))
    return _run("clusters", table, checks, "face_id", p, batch_id, docs_dir, docs)
