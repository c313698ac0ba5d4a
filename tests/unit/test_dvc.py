"""dvc.yaml parses, its stages call the project's entry points, and `dvc metrics show` reads the metrics.

A few seconds; running the stages' commands and `dvc repro --dry` (which hashes LFW's 13k
photos) are in tests/integration/test_dvc.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")


def dvc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([DVC, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"dvc {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def pipeline() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_dvc_parses_the_pipeline(pipeline):
    listed = dvc("stage", "list", "--name-only").stdout.split()
    assert set(listed) == set(pipeline["stages"])
    graph = dvc("dag", "--md").stdout
    for name in pipeline["stages"]:
        assert name in graph


def test_stages_read_params_that_exist(pipeline):
    """Every `params:` entry names a section or key of params.yaml (a typo would silently never invalidate)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in pipeline["stages"].items():
        for entry in stage.get("params", []):
            keys = [entry] if isinstance(entry, str) else list(entry.get("params.yaml", []))
            for key in keys:
                node = params
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"stage {name}: params.yaml has no {key}"
                    node = node[part]


def test_stages_call_project_entry_points(pipeline):
    """The commands are the CLI / workflow entry points the DAGs use, not ad-hoc scripts."""
    for name, stage in pipeline["stages"].items():
        command = stage["cmd"]
        assert command.startswith("faces ") or "python -m components.workflow " in command, f"stage {name}: {command}"
    for name in ("ingest", "recluster", "retrain"):
        assert f"python -m components.workflow {name} " in pipeline["stages"][name]["cmd"]


def scalars(node, prefix: str = "") -> dict:
    """Dotted keys of the numbers in nested dicts (what `dvc metrics show` tabulates; lists are left out)."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            found.update(scalars(value, f"{prefix}{key}."))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        found[prefix[:-1]] = node
    return found


def test_dvc_metrics_show_reads_the_metrics_files(pipeline):
    committed = [next(iter(m)) if isinstance(m, dict) else m
                 for stage in pipeline["stages"].values() for m in stage.get("metrics", [])]
    present = [path for path in committed if (REPO / path).is_file()]
    assert present, "no metrics file of dvc.yaml exists"
    shown = json.loads(dvc("metrics", "show", "--json", *present).stdout)
    data = shown[""]["data"]
    for path in present:
        assert "error" not in data[path], data[path]
        expected = scalars(json.loads((REPO / path).read_text()))
        assert expected, f"{path} holds no numbers"
        assert scalars(data[path]["data"]) == expected


def test_minio_remote_is_configured():
    remotes = dict(line.split(None, 1) for line in dvc("remote", "list").stdout.splitlines() if line.strip())
    assert remotes["minio"].split()[0].startswith("s3://")
    assert "shared" in remotes
