"""Multimodal model families: a prompt-embedding builder in front of a Decoder, one family per file."""
