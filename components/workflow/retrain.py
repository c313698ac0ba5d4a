"""``face_retrain``: one self-labelled retraining cycle, then tell serving about a new champion.

:func:`retrain` calls :func:`components.train.retrain.retrain_cycle` (self-labels and
held-out evidence from the identity store, or from the LFW stream; re-fit the champion's
head; compare both on the evidence; register the challenger after the decision; promote
it only when it wins by the margin) with the trigger form's overrides of params.yaml's
``retrain:`` section. The outcome is written under ``<work area>/retrain/<key>.json``
and the registered version carries the key, so a cleared, retried or killed-and-rerun
task registers no second version.

:func:`reload_serving` POSTs ``/reload`` to the BentoML service at ``FACES_SERVING_URL``
(header ``X-API-Key: $FACES_API_KEY``) when the champion changed; the service also polls
the registry, so a missed reload only delays the switch.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, fields, replace
from pathlib import Path

from components.train.retrain import LABEL_SOURCES
from components.workflow import WorkflowError
from components.workflow import workspace as ws
from components.workflow.ingest import _settings, _workspace



def retrain_params(settings, overrides: dict | None):
    """params.yaml's ``retrain:`` section with the trigger form's non-empty overrides.

    Raises:
        WorkflowError: an unknown parameter name.
    """
    base = settings.retrain
    known = {f.name: type(getattr(base, f.name)) for f in fields(base)}
    chosen = {key: value for key, value in (overrides or {}).items() if value is not None and value != ""}
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise WorkflowError(f"unknown retrain parameters {unknown}; known: {sorted(known)}")
    from components.train.retrain import RetrainError, check_params

    converted = {}
    for key, value in chosen.items():
        try:
            converted[key] = known[key](value)
        except (TypeError, ValueError):
            raise WorkflowError(f"retrain parameter {key}={value!r} is not a {known[key].__name__}") from None
    try:
        return check_params(replace(base, **converted))
    except RetrainError as error:
        raise WorkflowError(str(error)) from error


def _local_dir(workspace: ws.Workspace, settings, *parts: str) -> Path:
    # Checkpoints need a local disk: the work area when it is local, else params.yaml's work_dir.
    root = Path(settings.workflow.work_dir) if workspace.root.startswith("s3://") else Path(workspace.root)
    return root.joinpath(*parts)


def retrain(key: str, *, overrides: dict | None = None, labels_from: str = "store", limit_people: int | None = None,
            settings=None) -> str:
    """Run one retraining cycle (or return the one this key already ran).

    Args:
        key: what identifies this request (the DAG run); keys the outcome and the
            registered version, so a cleared or retried task registers nothing new.
        overrides: ``retrain:`` parameters to change for this cycle (None / "" keep params.yaml's).
        labels_from: ``store``: self-labels and evidence from the identity store;
            ``lfw``: from the LFW stream run through the identity life cycle (a benchmark option).
        limit_people: an LFW subset (``labels_from="lfw"``), for quick checks.
        settings: parameters.

    Returns:
        URI of ``retrain/<key>.json``: the cycle's outcome (``decision``, both models'
        figures, the evidence, MLflow run id, model versions).

    Raises:
        WorkflowError: bad parameters (before any work), or the cycle could not run (too
            few self-labels, no champion); the champion is left as it was.
    """
    from components.train.retrain import RetrainError, retrain_cycle

    settings = settings or _settings()
    if labels_from not in LABEL_SOURCES:
        raise WorkflowError(f"labels_from must be one of {', '.join(LABEL_SOURCES)}, got {labels_from!r}")
    params = retrain_params(settings, overrides)  # a bad trigger parameter fails here, before any work
    workspace = _workspace(settings)
    safe_key = "".join(c if c.isalnum() or c in "._-" else "_" for c in key)
    out_uri = ws.join(workspace.root, "retrain", f"{safe_key}.json")
    if ws.exists(out_uri):
        return out_uri  # this request already ran: no second model version
    try:
        outcome = retrain_cycle(settings, _local_dir(workspace, settings, "retrain"), key=key, labels_from=labels_from,
                                store_url=workspace.store_url, limit_people=limit_people, params=params,
                                progress=False)
    except RetrainError as error:
        raise WorkflowError(f"retraining did not run: {error}") from error
    outcome = {**outcome, "request": {"key": key, "labels_from": labels_from, "limit_people": limit_people,
                                      "params": asdict(params)}}
    return ws.write_json(out_uri, outcome)


def champion_changed(outcome: dict) -> bool:
    """Whether the cycle moved the ``champion`` alias."""
    decision = outcome.get("decision") or {}
    before, after = decision.get("champion_before"), decision.get("champion_after")
    return bool(decision.get("decision") == "promote" or (after is not None and after != before))


def reload_serving(outcome_uri: str, *, url: str | None = None, api_key: str | None = None, timeout_s: float = 30,
                   force: bool = False) -> dict:
    """Ask the serving service to load the store's model, when it changed.

    Args:
        outcome_uri: what :func:`retrain` returned (or a re-embed report, with ``force``).
        url: the service's base URL; default ``$FACES_SERVING_URL`` (unset: nothing to tell).
        api_key: default ``$FACES_API_KEY``.
        timeout_s: HTTP timeout.
        force: tell serving whatever the outcome says (face_reembed calls it after a switch).

    Returns:
        ``{"reloaded": bool, "reason": str, "status": int | None, "response": ...}``.

    Raises:
        WorkflowError: the service refused the request (4xx: a wrong key or URL, retrying
            will not help). Connection errors and 5xx propagate as OSError, so the task retries.
    """
    outcome = ws.read_json(outcome_uri)
    if not force and not champion_changed(outcome):
        return {"reloaded": False, "reason": "the champion did not change", "status": None}
    url = url or os.environ.get("FACES_SERVING_URL", "")
    if not url:
        return {"reloaded": False, "reason": "FACES_SERVING_URL is not set (serving polls the registry)", "status": None}
    key = api_key if api_key is not None else os.environ.get("FACES_API_KEY", "")
    request = urllib.request.Request(url.rstrip("/") + "/reload", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", **({"X-API-Key": key} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            body = answer.read().decode(errors="replace")
            status = answer.status
    except urllib.error.HTTPError as error:
        if 400 <= error.code < 500:
            raise WorkflowError(f"serving at {url} refused /reload: HTTP {error.code} {error.reason}") from error
        raise OSError(f"serving at {url} failed /reload: HTTP {error.code}") from error
    try:
        response = json.loads(body)
    except ValueError:
        response = body[:500]
    return {"reloaded": True, "reason": "new champion", "status": status, "response": response}
