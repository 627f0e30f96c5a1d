"""The end-to-end demo and its report."""
