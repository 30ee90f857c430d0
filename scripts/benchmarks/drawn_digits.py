"""How the default MNIST models read digits drawn on paper, as a newcomer meets them: a fresh
`deepr serve` builds the default repository, then `deepr classify` reads each picture of
tests/drawn_digits.py (140: five fonts and pen strokes, dark on light, anywhere on a 200x200
page). Prints, per model, the share read right, the held-out accuracy the build logged, and
when the model was ready; writes JSON.

    python scripts/benchmarks/drawn_digits.py [--checkout DIR] [--out drawn_digits.json]

`--checkout` serves and classifies with another checkout of deepr (an older commit in a git
worktree), with this checkout's pictures, so that before and after are the same test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from drawn_digits import write_drawn_digits  # noqa: E402

MODELS = ("mnist_dense", "mnist_convnet", "mnist_convnet_nopool")


def serve_defaults(checkout: Path, home: Path) -> tuple[subprocess.Popen, str, dict[str, float], list[str]]:
    """A first `deepr serve` on an empty DEEPR_HOME, once every default model is ready: the
    process, its gRPC address, seconds to each model, and its log."""
    env = {**os.environ, "DEEPR_HOME": str(home)}
    command = [sys.executable, "-m", "deepr", "serve", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(command, cwd=checkout, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    log: list[str] = []
    url, ready = "", {}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and len(ready) < len(MODELS):
        line = process.stderr.readline()
        if not line:
            raise SystemExit("the server stopped:\n" + "".join(log[-20:]))
        log.append(line)
        if match := re.search(r"serving .* on ([\d.]+:\d+)", line):
            url = match.group(1)
        if (match := re.search(r"(mnist_\w+) is ready, (\d+) s after the server started", line)) and (
            match.group(1) in MODELS
        ):
            ready[match.group(1)] = int(match.group(2))
    return process, url, ready, log


def read_right(checkout: Path, url: str, model: str, pictures: list[tuple[Path, int]]) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "deepr", "classify", "--model", model, "--url", url, "--top-k", "1"]
        + [str(path) for path, _ in pictures],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"deepr classify failed: {done.stderr}")
    answers = [line.split()[1] for line in done.stdout.splitlines()]
    return sum(answer == str(label) for answer, (_, label) in zip(answers, pictures)) / len(pictures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the deepr checkout to run (default: this one)")
    parser.add_argument("--out", type=Path, default=Path("drawn_digits.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pictures = write_drawn_digits(Path(tmp) / "drawn")
        process, url, ready, log = serve_defaults(args.checkout, Path(tmp) / "home")
        try:
            text = "".join(log)
            rows = {}
            for model in MODELS:
                held_out = re.search(rf"{model}: held-out accuracy ([\d.]+)", text)
                rows[model] = {
                    "drawn_right": round(read_right(args.checkout, url, model, pictures), 4),
                    "held_out_accuracy": float(held_out.group(1)) if held_out else None,
                    "ready_after_s": ready.get(model),
                }
        finally:
            process.terminate()
            process.wait(60)
    print(f"{'model':<22} {'drawn digits right':>18} {'held-out accuracy':>18} {'ready after':>12}")
    for model, row in rows.items():
        print(
            f"{model:<22} {row['drawn_right']:>18.1%} {row['held_out_accuracy'] or 0:>18.4f} "
            f"{row['ready_after_s']:>10} s"
        )
    result = {"checkout": str(args.checkout), "pictures": len(pictures), "models": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
