"""Multimodal model families, one per file: each a sensor encoder + projector in front of a :class:`~imuspec.Decoder`."""
