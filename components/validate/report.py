"""Running a Great Expectations suite on a table and turning its result into a report.

Great Expectations 1.x, in an ephemeral (in-memory) context: pandas data source ->
dataframe asset -> whole-dataframe batch definition -> ExpectationSuite ->
ValidationDefinition. Each expectation carries ``meta.check``, the short name the
report uses, and a function that says in a sentence why a row failed it.

Data Docs: when the result has to be kept (on failure by default), the same suite
runs again through a Checkpoint whose ``UpdateDataDocsAction`` builds a real Data
Docs site (index, suite page, validation page) into a folder keyed by batch id and
suite, never by time, so it can be logged as an MLflow artifact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Check", "ValidationFailed", "ValidationReport", "log_report", "run_suite"]

#: When a Data Docs site is written: ``on_failure`` (what the issue needs: the failed
#: result is kept as an MLflow artifact), ``always``, or ``never``.
DOCS_MODES = ("on_failure", "always", "never")


@dataclass
class ValidationReport:
    """The outcome of one suite on one batch.

    Attributes:
        success: every expectation passed.
        failures: one dict per failing row and check, in table order: ``row`` (the
            row's id: file key, face id, embedding id; ``None`` for table-level checks),
            ``check`` (short name, e.g. ``decodable``), ``expectation`` (the GE type),
            ``column``, ``value`` and ``reason`` (a sentence).
        html_path: the Data Docs page of this validation, when one was written.
        suite: the suite's name (``images``, ``faces``, ``embeddings``, ``clusters``).
        batch_id: what the Data Docs site and result file are keyed by.
        statistics: GE's counts (evaluated / successful expectations, ...).
        site_dir: the Data Docs site folder (index.html, validation page, ``result.json``).
    """

    success: bool
    failures: list[dict] = field(default_factory=list)
    html_path: Path | None = None
    suite: str = ""
    batch_id: str = ""
    statistics: dict = field(default_factory=dict)
    site_dir: Path | None = None

    @property
    def failed_rows(self) -> dict[Any, list[str]]:
        """Row id -> names of the checks it failed (table-level failures under ``None``)."""
        rows: dict[Any, list[str]] = {}
        for failure in self.failures:
            rows.setdefault(failure["row"], []).append(failure["check"])
        return rows

    def message(self, limit: int = 20) -> str:
        """A few lines for people: which rows failed which checks, and why."""
        if self.success:
            return f"{self.suite}: all expectations passed"
        lines = [f"{self.suite} validation failed for batch {self.batch_id}: "
                 f"{len(self.failures)} failure(s) in {len(self.failed_rows)} row(s)"]
        for failure in self.failures[:limit]:
            where = "the batch" if failure["row"] is None else failure["row"]
            lines.append(f"  - {where}: {failure['reason']} [{failure['check']}]")
        if len(self.failures) > limit:
            lines.append(f"  ... and {len(self.failures) - limit} more")
        if self.html_path:
            lines.append(f"  Data Docs: {self.html_path}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready summary (what the workflow records and logs)."""
        return {"suite": self.suite, "batch_id": self.batch_id, "success": self.success,
                "statistics": self.statistics, "failures": self.failures,
                "html_path": str(self.html_path) if self.html_path else None}

    def raise_if_failed(self) -> ValidationReport:
        """Return self when it passed; raise :class:`ValidationFailed` otherwise."""
        if not self.success:
            raise ValidationFailed(self)
        return self


class ValidationFailed(Exception):
    """A batch failed its suite; ``str()`` says which rows and why, ``report`` has the rest."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.message())
        self.report = report

    def __reduce__(self):  # picklable for Airflow / Celery
        return (type(self), (self.report,))


@dataclass
class Check:
    """One expectation of a suite, with the words for its failures.

    Attributes:
        name: the short name in reports (``decodable``, ``unit_norm``, ...).
        expectation: builds the GE expectation; called with ``meta`` and ``notes``.
        explain: (failing value, the failing row's id columns, the table) -> a sentence.
        notes: what the check means, shown in Data Docs.
    """

    name: str
    expectation: Callable[..., Any]
    explain: Callable[[Any, dict, Any], str]
    notes: str = ""


def _quiet_gx():
    # No network calls (usage statistics) and no progress bars from a library that
    # runs inside pipeline tasks on offline machines.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def _plain(value: Any) -> Any:
    """numpy / pandas scalars -> JSON-ready Python values (NaN -> None)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return value


def table_digest(table) -> str:
    """A short content hash of a table: the default batch id (idempotent: same rows, same id)."""
    import pandas as pd

    hashed = pd.util.hash_pandas_object(table.astype("string"), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(map(str, table.columns)).encode()).hexdigest()[:16]


def run_suite(suite: str, table, checks: Sequence[Check], id_column: str, *, batch_id: str | None = None,
              docs_dir: str | os.PathLike[str] | None = None, docs: str = "on_failure") -> ValidationReport:
    """Validate ``table`` against ``checks`` with Great Expectations.

    Args:
        suite: the suite's name.
        table: a pandas DataFrame, one row per item.
        checks: the expectations.
        id_column: the column naming each row in failures.
        batch_id: keys the Data Docs folder; default a hash of the table's content.
        docs_dir: where Data Docs sites go (``<docs_dir>/<batch_id>/<suite>/``); ``None``
            writes none.
        docs: ``on_failure``, ``always`` or ``never``.

    Returns:
        The report.
    """
    if docs not in DOCS_MODES:
        raise ValueError(f"docs must be one of {DOCS_MODES}, got {docs!r}")
    if id_column not in table.columns:
        raise ValueError(f"the {suite} table has no {id_column!r} column (columns: {list(table.columns)})")
    gx = _quiet_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    batch_id = batch_id or table_digest(table)
    table = table.reset_index(drop=True)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas(f"{suite}_source")
             .add_dataframe_asset(name=f"{suite}_table")
             .add_batch_definition_whole_dataframe("whole_table"))
    by_name = {check.name: check for check in checks}
    expectations = [check.expectation(meta={"check": check.name}, notes=check.notes or None) for check in checks]
    gx_suite = context.suites.add(gx.ExpectationSuite(name=suite, expectations=expectations))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=suite, data=batch, suite=gx_suite))
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]}
    result = definition.run(batch_parameters={"dataframe": table}, result_format=result_format)

    site_dir = html_path = None
    if docs_dir is not None and (docs == "always" or (docs == "on_failure" and not result.success)):
        site_dir, html_path, result = _data_docs(context, gx, definition, table, result_format,
                                                 Path(docs_dir) / batch_id / suite, batch_id)
    failures = _failures(result, by_name, table, id_column)
    report = ValidationReport(success=bool(result.success), failures=failures, html_path=html_path, suite=suite,
                              batch_id=batch_id, statistics={k: _plain(v) for k, v in result.statistics.items()},
                              site_dir=site_dir)
    if site_dir is not None:
        (site_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=1, default=str))
    return report


def _data_docs(context, gx, definition, table, result_format, site_dir: Path, batch_id: str):
    """Run the suite through a Checkpoint that builds a Data Docs site; return (site, page, result)."""
    from great_expectations.core.run_identifier import RunIdentifier

    site_dir.parent.mkdir(parents=True, exist_ok=True)
    building = site_dir.with_name(f".{site_dir.name}.{uuid.uuid4().hex[:12]}.partial")
    context.add_data_docs_site(site_name="faces", site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(building)},
    })
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{definition.name}_docs", validation_definitions=[definition], result_format=result_format,
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["faces"])],
    ))
    try:
        outcome = checkpoint.run(batch_parameters={"dataframe": table}, run_id=RunIdentifier(run_name=batch_id))
        result = next(iter(outcome.run_results.values()))
        (building / "result.json").write_text(json.dumps(result.to_json_dict(), indent=1, default=str))
        pages = sorted((building / "validations").rglob("*.html"))
        relative = pages[0].relative_to(building) if pages else Path("index.html")
        # Re-running a batch replaces its site whole (keyed by batch id, not by time).
        if site_dir.exists():
            shutil.rmtree(site_dir)
        os.replace(building, site_dir)
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return site_dir, site_dir / relative, result


def _failures(result, by_name: dict[str, Check], table, id_column: str) -> list[dict]:
    failures = []
    order = {name: index for index, name in enumerate(by_name)}
    positions = {_plain(value): index for index, value in enumerate(table[id_column])}
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        name = (config.meta or {}).get("check", config.type)
        check = by_name.get(name)
        column = config.kwargs.get("column") or config.kwargs.get("column_list")
        raised = (item.exception_info or {}).get("raised_exception")
        if raised:
            message = (item.exception_info or {}).get("exception_message", "")
            failures.append({"row": None, "check": name, "expectation": config.type, "column": column, "value": None,
                             "reason": f"the check could not run: {message}", "_order": (-1, order.get(name, 99))})
            continue
        rows = (item.result or {}).get("unexpected_index_list")
        if not rows:  # a table-level expectation (row count, ...)
            value = _plain((item.result or {}).get("observed_value"))
            failures.append({"row": None, "check": name, "expectation": config.type, "column": column, "value": value,
                             "reason": check.explain(value, {}, table) if check else str(item.result),
                             "_order": (-1, order.get(name, 99))})
            continue
        for entry in rows:
            entry = {key: _plain(value) for key, value in entry.items()}
            value = entry.get(column) if isinstance(column, str) else {c: entry.get(c) for c in column or []}
            row = entry.get(id_column)
            failures.append({"row": row, "check": name, "expectation": config.type, "column": column, "value": value,
                             "reason": check.explain(value, entry, table) if check else f"unexpected value {value!r}",
                             "_order": (positions.get(row, len(positions)), order.get(name, 99))})
    failures.sort(key=lambda failure: failure.pop("_order"))
    return failures


def log_report(report: ValidationReport, artifact_path: str = "validation") -> None:
    """Log a report to the active MLflow run: ``<artifact_path>/<suite>/`` holds the
    Data Docs site (when one was written) and ``report.json`` (always).

    Raises:
        RuntimeError: there is no active MLflow run.
    """
    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_report needs an active MLflow run (components.track.start_run)")
    target = f"{artifact_path}/{report.suite}"
    if report.site_dir is not None and report.site_dir.exists():
        mlflow.log_artifacts(str(report.site_dir), target)
    else:
        mlflow.log_dict(report.to_dict(), f"{target}/report.json")
