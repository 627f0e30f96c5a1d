"""Evaluation: labelled tasks from a corpus, datasets, kNN and linear probes, metrics and the report."""
