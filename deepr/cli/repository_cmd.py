"""deepr repository, deepr load, deepr unload: a running server's model control."""

from __future__ import annotations

import argparse

from .arguments import add_server_options
from .errors import task_errors


def _repository(args: argparse.Namespace) -> int:
    return show_repository(args.url)


def show_repository(url: str) -> int:
    """Print a server's models, one line each: version, state, and why one does not serve."""
    from serving.client import InferenceClient
    from serving.protocol.schema import COMPLETED_KEY

    with task_errors(url), InferenceClient(url) as client:
        models = client.repository_index()
        completed = {}
        for m in models:
            parameters = client.model_config(m.name).parameters if m.state == "READY" else {}
            if COMPLETED_KEY in parameters:
                completed[m.name] = parameters[COMPLETED_KEY].string_value
    if not models:
        print(f"the repository of the server at {url} holds no models")
        return 0
    width = max(len(m.name) for m in models)
    for m in models:
        note = f"config completed from the graph: {completed[m.name]}" if m.name in completed else m.reason
        print(f"{m.name:<{width}}  version {m.version or '-':<3} {m.state:<11} {note}".rstrip())
    return 0


def _load(args: argparse.Namespace) -> int:
    from serving.client import InferenceClient

    with task_errors(args.url), InferenceClient(args.url) as client:
        client.load_model(args.name)
        ready = client.is_model_ready(args.name)
    print(f"{args.name}: loaded, {'ready' if ready else 'not ready'} (server {args.url})")
    return 0


def _unload(args: argparse.Namespace) -> int:
    from serving.client import InferenceClient

    with task_errors(args.url), InferenceClient(args.url) as client:
        client.unload_model(args.name)
    print(f"{args.name}: unloaded (server {args.url})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("repository", help="a running server's models: version, state and why one is not ready")
    add_server_options(p)
    p.set_defaults(run=_repository)
    p = sub.add_parser("load", help="load a model into a running server (a new export, a new version)")
    p.add_argument("name", help="model folder name in the server's repository")
    add_server_options(p)
    p.set_defaults(run=_load)
    p = sub.add_parser("unload", help="stop a running server serving a model (requests already accepted are answered)")
    p.add_argument("name", help="served model name")
    add_server_options(p)
    p.set_defaults(run=_unload)
