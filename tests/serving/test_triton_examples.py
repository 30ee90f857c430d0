"""NVIDIA's own example clients, unchanged, against deepr serving the repository they expect
(tests/triton_examples): every one that needs no GPU and no model deepr cannot serve passes."""

from __future__ import annotations

import hashlib

from triton_examples.run import CLIENT_DIR, CLIENTS, run_on_deepr


def test_the_example_clients_are_nvidias_unchanged():
    listed = dict(
        reversed(line.split()) for line in (CLIENT_DIR.parent / "SHA256SUMS").read_text().splitlines() if line
    )
    assert sorted(listed) == sorted(p.name for p in CLIENT_DIR.glob("*.py"))
    for name, digest in listed.items():
        assert hashlib.sha256((CLIENT_DIR / name).read_bytes()).hexdigest() == digest, name


def test_every_example_client_passes():
    results = run_on_deepr(cuda=False)
    failed = [f"{r['client']}:\n{r['output']}" for r in results if r["result"] == "FAIL"]
    assert not failed, "\n\n".join(failed)
    passed = [r["client"] for r in results if r["result"] == "PASS"]
    assert len(passed) == sum(not c.needs_cuda for c in CLIENTS) == 31
