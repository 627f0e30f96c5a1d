"""Embedding export: terracube embed, its store, its tile table."""
