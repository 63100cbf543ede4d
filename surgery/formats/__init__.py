"""Containers read and written as bytes: safetensors shards and folders, GGUF files."""
