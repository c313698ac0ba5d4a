"""The soak's account of a promotion: requests before, during and after it, and which model answered."""

from __future__ import annotations

from components.bench.soak import promotion_goals, switch_phases

PROMOTION = {"started_s": 100.0, "steps_ended_s": {"register_and_promote": 103.0, "reembed": 130.0, "reload": 135.0},
             "registry_version_before": 1, "registry_version_after": 2,
             "model_version_before": "net+old", "model_version_after": "net+new"}


def event(started, finished, outcome=None, version="old"):
    registry = {"old": 1, "new": 2}[version]
    return (started, finished, "verify", outcome, None if outcome else registry, None if outcome else f"net+{version}")


def test_requests_are_split_at_the_promotion_and_the_reload():
    events = [event(90, 99), event(98, 101), event(120, 133, "HTTP 503 model_changing"),
              event(133, 136),  # in flight at the swap: finishes on the old model, after the reload
              event(134, 137, version="new"), event(136, 139, version="new")]
    phases = switch_phases(events, PROMOTION)
    assert [phases[name]["requests"] for name in ("before", "during", "after")] == [1, 2, 3]
    assert phases["during"]["errors"] == 1 and phases["during"]["error_kinds"] == {"HTTP 503 model_changing": 1}
    assert phases["before"]["registry_versions"] == {"1": 1}
    assert phases["after"]["registry_versions"] == {"1": 1, "2": 2}
    assert phases["new_model_first_answered_s"] == 137 and phases["old_model_last_answered_s"] == 136
    assert phases["old_model_after_reload"] == 0  # the old answer was sent before the reload
    goals = promotion_goals(PROMOTION, phases)
    assert goals["done"] and goals["new_model_serves_after_reload"]
    assert (goals["errors_before"], goals["errors_during"], goals["errors_after"]) == (0, 1, 0)
    assert goals["served_before"] == ["1"] and goals["served_after"] == ["1", "2"]


def test_the_old_model_answering_a_request_sent_after_the_reload_fails_the_goal():
    phases = switch_phases([event(90, 99), event(136, 139, version="old")], PROMOTION)
    assert phases["old_model_after_reload"] == 1
    assert not promotion_goals(PROMOTION, phases)["new_model_serves_after_reload"]


def test_a_promotion_that_failed_is_not_done():
    failed = {"started_s": 100.0, "steps_ended_s": {"register_and_promote": 103.0}, "error": "RuntimeError: boom"}
    phases = switch_phases([event(90, 99), event(101, 104)], failed)
    assert phases["during"]["requests"] == 1 and phases["after"]["requests"] == 0
    goals = promotion_goals(failed, phases)
    assert not goals["done"] and not goals["new_model_serves_after_reload"] and goals["error"] == "RuntimeError: boom"
