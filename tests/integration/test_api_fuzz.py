"""OpenAPI-driven fuzzing (schemathesis) of the API in-process, on SQLite and PostgreSQL: neither the
requests the document allows nor the invalid ones schemathesis derives from it get a 5xx, and the
answers match the document. Bounded: a dozen examples per operation and mode.

(schemathesis' own pytest plugin does not work with pytest 9 yet, so the operations are walked here.)
"""

from __future__ import annotations

from typing import Any

import schemathesis
from console_support import app, bearer, seed, services, tokens
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from callback_queue.clock import FakeClock
from callback_queue.store import Store

MAX_EXAMPLES = 12


def test_api_fuzz_finds_no_server_errors(store: Store, clock: FakeClock) -> None:
    seed(store, clock, 5)
    headers = bearer(tokens(store, clock)["admin"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app(services(store, clock)), headers=headers)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15
    calls: dict[str, int] = {}
    statuses: set[int] = set()
    def fuzz(op: Any, mode: GenerationMode, excluded: list[Any]) -> None:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            response = case.call_and_validate(headers=headers, excluded_checks=excluded)
            calls[op.label] = calls.get(op.label, 0) + 1
            statuses.add(response.status_code)
            assert response.status_code < 500, (case.as_curl_command(), response.text)

        run()

    for op in operations:
        # report ranges are limited to 2000-2099 and ten years, which JSON Schema cannot say for dates
        excluded = [positive_data_acceptance] if op.path == "/api/reports" else []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(op, mode, excluded)
    assert len(calls) == len(operations) and sum(calls.values()) >= 5 * len(operations)
    assert {200, 400, 404} <= statuses and not any(s >= 500 for s in statuses)
