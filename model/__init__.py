"""terracube model stage."""
