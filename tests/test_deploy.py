"""The Dockerfiles and KServe manifests agree with deepr itself: their arguments parse with
`deepr`'s own command line, their ports and probes are the server's, and their environment
variables name real settings."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml

from conftest import ROOT
from deepr.cli import build_parser
from serving.server.settings import ENV_PREFIX, ServerSettings

DEPLOY = ROOT / "deploy"


def manifests() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((DEPLOY / "kserve").glob("*.yaml"))}


def dockerfile_command(path) -> list[str]:
    text = path.read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    return entrypoint + cmd


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_runs_deepr_serve_on_the_exposed_ports(name):
    command = dockerfile_command(DEPLOY / name)
    assert command[0] == "deepr"
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve" and str(args.repository) == "/mnt/models"
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", (DEPLOY / name).read_text(), re.M).group(1).split()}
    assert exposed == {args.port, args.http_port, args.metrics_port}
    # Everything the package needs is copied in.
    copied = set(re.findall(r"^COPY (\S+)", (DEPLOY / name).read_text(), re.M))
    assert {"deepr", "zoo", "exporters", "serving"} <= copied


def test_serving_runtime_matches_the_server():
    runtime = manifests()["servingruntime.yaml"]
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and str(args.repository) == "/mnt/models"  # where KServe puts storageUri
    assert args.model_name == "{{.Name}}"  # KServe's template: one model's files are served under the service's name
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"h2c": args.port, "http1": args.http_port}  # KServe's names: plaintext gRPC, HTTP/1.1
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": args.http_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": args.http_port}
    assert runtime["metadata"]["annotations"]["prometheus.io/port"] == str(args.metrics_port)
    fields = {f.name for f in dataclasses.fields(ServerSettings)}
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    for name, value in env.items():
        assert name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() in fields, name
    ServerSettings.from_env(env)  # every value parses


def test_inference_service_uses_the_runtime():
    found = manifests()
    runtime, service = found["servingruntime.yaml"], found["inferenceservice.yaml"]
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert re.match(r"^(pvc|s3|gs|https?)://", model["storageUri"])
    assert model["ports"][0]["containerPort"] == runtime["spec"]["containers"][0]["ports"][0]["containerPort"]
