"""Which warm step server a task talks to: one per environment and code (components/workflow/warm.py)."""

from __future__ import annotations

from components.workflow import warm

BASE = {"FACES_WORK_URI": "/work", "MLFLOW_TRACKING_URI": "sqlite:///m.db", "HOME": "/home/a", "PATH": "/bin"}


def key(environ: dict, code: str = "c1", cwd: str = "/repo") -> str:
    return warm.environment_key(environ, cwd=cwd, code=code)


def test_tasks_with_the_same_settings_and_code_share_a_server():
    assert key(BASE) == key(dict(reversed(list(BASE.items()))))
    # Variables no step reads (the task's own Airflow context, the shell) do not split servers.
    assert key(BASE) == key({**BASE, "AIRFLOW_CTX_DAG_RUN_ID": "manual_1", "PATH": "/usr/bin", "FACES_WARM_DIR": "/x"})


def test_other_settings_or_other_code_get_a_server_of_their_own():
    assert key(BASE) != key({**BASE, "FACES_STORE_URL": "postgresql+psycopg2://db/faces"})
    assert key(BASE) != key({**BASE, "AWS_ACCESS_KEY_ID": "other"})
    assert key(BASE) != key(BASE, code="c2")
    assert key(BASE) != key(BASE, cwd="/elsewhere")


def test_the_code_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "components").mkdir()
    module = tmp_path / "components" / "step.py"
    module.write_text("x = 1\n")
    before = warm.code_fingerprint(tmp_path)
    module.write_text("x = 22\n")
    assert warm.code_fingerprint(tmp_path) != before
