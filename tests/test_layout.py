"""Project-level guarantees: generated code is current, and the serving runtime needs no PyTorch."""

import subprocess
import sys

from conftest import ROOT


def test_generated_protobuf_code_is_current():
    result = subprocess.run(
        [sys.executable, "scripts/tools/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_serving_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import serving.tasks.classify, serving.client.inference_client, serving.server.grpc.server, serving.protocol.preprocessing\n"
        "import tritonclient.grpc\n"  # and deepr's messages coexist with tritonclient's
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
