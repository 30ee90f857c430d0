"""protoc output for protos/*.proto; regenerate with scripts/gen_protos.py."""
