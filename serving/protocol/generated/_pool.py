"""The descriptor pool deepr's generated messages live in (see scripts/tools/gen_protos.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
