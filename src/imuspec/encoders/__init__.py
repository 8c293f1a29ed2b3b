"""Sensor encoders: raw sensor tensors in, features for a multimodal LM out."""
