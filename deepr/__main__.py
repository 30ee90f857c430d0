from ._entry import run

raise SystemExit(run())
