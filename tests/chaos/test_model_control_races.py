"""Model control racing requests: every accepted request is answered, with the old version's
result or UNAVAILABLE and a reason, never left to its deadline."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from conftest import TEST_DEVICE
from serving.server.grpc.server import serve_in_thread
from serving.server.settings import ServerSettings

BOUND_S = 3.0
"""Longest any request may take here: a 200 ms queue delay plus a tiny model."""


def send(client: triton.InferenceServerClient, model: str, value: float) -> tuple[str, float]:
    """(status code name, seconds) of one request; the answer is checked when it is OK."""
    x = np.full((1, 4), value, np.float32)
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    start = time.monotonic()
    try:
        result = client.infer(model, [tensor], client_timeout=BOUND_S * 2)
    except InferenceServerException as exc:
        return exc.status().removeprefix("StatusCode."), time.monotonic() - start
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    return "OK", time.monotonic() - start


@pytest.fixture(scope="module")
def server(chaos_repository):
    settings_ = ServerSettings(
        repository=chaos_repository, host="127.0.0.1", port=0, metrics_port=-1, device=TEST_DEVICE
    )
    with serve_in_thread(settings_) as running:
        yield running


@pytest.mark.parametrize("action", ["unload", "load"])
def test_a_request_gathered_into_a_batch_is_answered_when_its_model_goes(server, action):
    # `delayed` waits 200 ms for more requests; the unload or reload comes 50 ms into that wait,
    # while the request sits in the batch being gathered (neither queued nor running).
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    outcome: list[tuple[str, float]] = []
    sender = threading.Thread(target=lambda: outcome.append(send(client, "delayed", 1.5)))
    sender.start()
    time.sleep(0.05)
    getattr(client, f"{action}_model")("delayed")
    sender.join(BOUND_S * 3)
    client.load_model("delayed")
    code, seconds = outcome[0]
    assert code == "OK" and seconds < 1.0, outcome


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(["double", "delayed"]),
    actions=st.lists(st.tuples(st.floats(0.0, 0.25), st.sampled_from(["unload", "load"])), min_size=1, max_size=4),
)
def test_every_request_completes_with_a_known_code_whatever_model_control_does(server, model, actions):
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    client.load_model(model)
    outcomes: list[tuple[str, float]] = []
    stop = threading.Event()

    def keep_sending(seed: int) -> None:
        own = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        for i in range(200):
            if stop.is_set():
                break
            outcomes.append(send(own, model, float(seed * 1000 + i)))
        own.close()

    senders = [threading.Thread(target=keep_sending, args=(s,)) for s in range(8)]
    for sender in senders:
        sender.start()
    for pause, action in actions:
        time.sleep(pause)
        getattr(client, f"{action}_model")(model)
    time.sleep(0.1)
    stop.set()
    for sender in senders:
        sender.join(BOUND_S * 3)
    client.load_model(model)
    codes = {code for code, _ in outcomes}
    assert codes <= {"OK", "UNAVAILABLE"}, codes
    assert max(seconds for _, seconds in outcomes) < BOUND_S
    assert not any(sender.is_alive() for sender in senders)
