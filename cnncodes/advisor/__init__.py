"""The advisor: evidence about size and similarity, layer probes, and the quadrant decision."""
