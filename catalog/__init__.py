"""terracube catalog stage."""
