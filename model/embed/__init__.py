"""Embedding export: a checkpoint and a corpus -> georeferenced embedding maps and a tile table."""
