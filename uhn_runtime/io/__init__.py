"""What leaves a run: exported weights, ONNX files and plots."""
