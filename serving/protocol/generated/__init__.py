"""protoc output for protos/*.proto; regenerate with scripts/tools/gen_protos.py."""
