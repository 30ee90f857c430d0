"""deepr's repositories served by NVIDIA Triton's own server (`deepr serve --engine triton`).

Triton's C++ front parses, validates, queues and merges requests, so no Python runs per
request: deepr's runtime (the same OnnxModel as deepr's own server, with its config
completion, warm-up, picture decoding and output checks) runs once per merged batch in a
python-backend model. The `tritonserver` binary comes from the nvidia-pytriton wheel
(`pip install --no-deps nvidia-pytriton==0.7.0`, Linux x86-64 only).

    distribution.py   where the wheel's tritonserver, python backend and stub are
    repository.py     deepr's repository written as Triton's python-backend repository
    python_model.py   the TritonPythonModel every translated model runs (inside Triton's stub)
    launch.py         start tritonserver on it with deepr's settings, stop it on SIGTERM
"""

PLAN_FILE = "deepr-engine.json"
"""Written beside each translated config (repository.py) and read by the model (python_model.py):
where the model's own folder and files are, and the runtime settings the server was started with."""
