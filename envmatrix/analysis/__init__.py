"""Analysis: validity and the one verdict procedure, costs, output parity. Reads results only."""
