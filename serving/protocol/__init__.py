"""What every side of deepr shares: the V2 wire format and the facts written into models.

Generated protobuf code, datatypes, tensor encoding, the error table, config.pbtxt
helpers, labels, classification strings, picture preprocessing, text encoding, and the
schema of every `deepr.*` key. It imports numpy, protobuf and Pillow only; everything
else in deepr (runtime, server, client, tasks, zoo, exporters) builds on it, never the
other way round.
"""
