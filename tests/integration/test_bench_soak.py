"""``faces bench soak`` in a short run: a new model version promoted under load, served without a failed request.

The benchmark's own code path (:func:`components.bench.soak.run_soak`) with 4 clients for
two minutes instead of 32 for ten: a real ``bentoml serve``, the face_ingest steps adding
batches, and 3 s in, a new model version registered, promoted, the store re-embedded and
the service reloaded. Every request must succeed, the service must answer with the new
model once the reload is answered, and the store must hold the new model's embeddings only.
Two minutes because the re-embed alone (a fresh process loading TensorFlow and both
models) took 75 s on 2 busy cores: the clients must still be running after it.
"""

from __future__ import annotations

import json

import pytest

from components.bench.soak import run_soak
from components.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_promotion_during_the_soak_fails_no_request_and_the_new_model_serves_after_it(tmp_path):
    out = tmp_path / "soak.json"
    result = run_soak(load_settings(), out, minutes=2.0, clients=4, sample_s=5.0, batch_photos=8, promote_at=0.05)

    assert json.loads(out.read_text())["goals"] == result["goals"]
    promotion, switch, goals = result["promotion"], result["switch"], result["goals"]
    assert promotion.get("error") is None, promotion["error"]
    assert (promotion["registry_version_before"], promotion["registry_version_after"]) == (1, 2)
    assert promotion["model_version_after"] != promotion["model_version_before"]  # other weights, not a new number only
    assert promotion["reload"]["status"] == 200 and promotion["reload"]["registry_version"] == 2
    assert goals["errors"] == 0 and result["ingest"]["failed"] == 0, (switch, result["ingest"]["failures"])
    assert switch["before"]["registry_versions"].keys() == {"1"} and switch["before"]["requests"] > 0
    assert switch["after"]["registry_versions"].get("2", 0) > 0, switch  # the clients kept going past the reload
    assert switch["old_model_after_reload"] == 0 and goals["promotion"]["new_model_serves_after_reload"]
    # The store holds one model's embeddings, the new one's; batches stored after the switch used it.
    assert list(result["store_models_at_end"]) == [promotion["model_version_after"]]
    reloaded = promotion["steps_ended_s"]["reload"]
    assert all(batch["model_version"] == promotion["model_version_after"]
               for batch in result["ingest"]["stored_with"] if batch["ended_s"] > reloaded)
