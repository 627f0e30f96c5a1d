"""terracube pipeline stage."""
