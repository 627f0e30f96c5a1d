"""Reading planned assets onto a tile's grid: direct windows where the asset lies on the grid lattice, stackstac for the rest."""
