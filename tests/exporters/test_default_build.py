"""One default build per home: a process that finds another building the default repository
waits for it, is told of each model as it is written, and trains nothing that is there."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time

from exporters.defaults import build_default_models
from tests.chaos.probes import add_doubling_model


def test_a_second_build_waits_serves_what_appears_and_trains_nothing_again(tmp_path):
    repository = tmp_path / "repository"
    repository.mkdir()
    lock = (tmp_path / "repository.build.lock").open("a+")
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another process is building
    lock.write(str(os.getpid()))
    lock.flush()
    waited, built, records = [], [], []

    def second() -> None:
        records.extend(
            build_default_models(
                repository, ["mnist_dense"], progress=False, on_wait=waited.append, on_built=built.append
            )
        )

    thread = threading.Thread(target=second)
    thread.start()
    deadline = time.monotonic() + 10
    while not waited and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waited == [os.getpid()]
    staging = tmp_path / "staging"
    add_doubling_model(staging, "mnist_dense")  # what the first build writes, whole
    (repository.parent / "repository.runs" / "mnist_dense").mkdir(parents=True)
    (repository.parent / "repository.runs" / "mnist_dense" / "weights.pt").write_bytes(b"")
    shutil.move(staging / "mnist_dense", repository / "mnist_dense")
    deadline = time.monotonic() + 10
    while not built and time.monotonic() < deadline:
        time.sleep(0.05)
    assert built == ["mnist_dense"]  # served as soon as it was written, before the lock came free
    assert thread.is_alive()  # and still waiting for the first build to end
    lock.close()  # the first build ends
    thread.join(30)
    assert not thread.is_alive()
    assert records == [] and built == ["mnist_dense"]  # nothing trained, nothing announced twice
    assert sorted(p.name for p in (repository / "mnist_dense").iterdir()) == ["1", "config.pbtxt"]
