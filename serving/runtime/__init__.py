"""onnxruntime sessions: which execution provider runs a graph, and sessions that compute
only part of a graph. Used by the server and by the tasks' local backends."""
