"""terracube workflows stage."""
