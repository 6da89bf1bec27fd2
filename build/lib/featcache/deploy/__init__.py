"""Deployment: any run as a model that takes photos and captions, exported as one OpenVINO/ONNX
model, and that exported model's own predictor."""
