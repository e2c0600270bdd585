"""From checkpoint to edge bundle: routing statistics, pruning, ONNX export, int8, signing."""
