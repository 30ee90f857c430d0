"""What people do with the zoo's graphs, each against a local onnxruntime session or a
served model: classification, Grad-CAM, feature extraction, filter patterns, DeepDream,
style transfer, text generation and activation grids."""
