"""How the MNIST models read digits on the papers of tests/paper_digits.py (plain, ruled,
boxed, textured, thin and thick strokes), per kind, and what they make of pages with no digit:
each picture prepared as `deepr classify` prepares it (the model's own preprocessing, framing
included) and run by onnxruntime in this process.

    python scripts/benchmarks/paper_digits.py --repository DIR [--checkout DIR] [--out paper.json]

`--repository`: a repository with the default models (a `deepr serve` home's, say
~/.cache/deepr/repository). `--checkout` prepares the pictures with another checkout of deepr
(an older commit in a git worktree), so that before and after are read by the same models.
Prints a table of pictures read right per kind and model, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from paper_digits import EMPTY_KINDS, KINDS, write_paper_digits  # noqa: E402

MODELS = ("mnist_dense", "mnist_convnet")

_PREPARE = """
import json, sys
import numpy as np
from google.protobuf import text_format
from serving.protocol.generated import model_config_pb2 as mc
from serving.protocol.preprocessing import ImagePreprocessing
config = text_format.Parse(open(sys.argv[1]).read(), mc.ModelConfig())
preprocess = ImagePreprocessing.from_json(config.parameters["deepr.preprocessing"].string_value)
found = []
arrays = []
for path in sys.argv[3:]:
    arrays.append(preprocess([path]))
    placement = preprocess.placement(path) if hasattr(preprocess, "placement") else None
    found.append(placement is not None)
np.save(sys.argv[2], np.concatenate(arrays))
print(json.dumps(found))
"""


def prepared(checkout: Path, config: Path, paths: list[Path], out: Path) -> tuple[np.ndarray, list[bool]]:
    """The model inputs `checkout`'s preprocessing makes of `paths`, and whether it found a digit in each."""
    done = subprocess.run(
        [sys.executable, "-c", _PREPARE, str(config), str(out), *map(str, paths)],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"preparing the pictures failed: {done.stderr}")
    return np.load(out), json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--out", type=Path, default=Path("paper_digits.json"))
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pictures = write_paper_digits(Path(tmp) / "paper")
        for model in MODELS:
            folder = args.repository / model
            version = max((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
            inputs, found = prepared(
                args.checkout, folder / "config.pbtxt", [p for p, _, _ in pictures], Path(tmp) / "x.npy"
            )
            session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            shape = [d if isinstance(d, int) else -1 for d in session.get_inputs()[0].shape]
            scores = session.run(None, {name: inputs.reshape(len(inputs), *shape[1:])})[0]
            answers = scores.argmax(axis=1)
            per_kind: dict[str, object] = {}
            for kind in KINDS:
                rows = [i for i, (_, k, _) in enumerate(pictures) if k == kind]
                per_kind[kind] = sum(int(answers[i]) == pictures[i][2] for i in rows)
            for kind in EMPTY_KINDS:
                rows = [i for i, (_, k, _) in enumerate(pictures) if k == kind]
                per_kind[f"{kind}: no digit found"] = sum(not found[i] for i in rows)
            per_kind["all kinds"] = sum(int(per_kind[k]) for k in KINDS)  # type: ignore[call-overload]
            results[model] = per_kind
    header = ["kind", *MODELS]
    print(f"{header[0]:<24}" + "".join(f"{h:>16}" for h in header[1:]))
    for kind in [*KINDS, "all kinds", *(f"{k}: no digit found" for k in EMPTY_KINDS)]:
        total = 10 * len(KINDS) if kind == "all kinds" else 5 if "no digit" in kind else 10
        print(f"{kind:<24}" + "".join(f"{str(results[m][kind]) + '/' + str(total):>16}" for m in MODELS))
    args.out.write_text(json.dumps({"checkout": str(args.checkout), "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
