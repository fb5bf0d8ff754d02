"""Reports: JSON, plots and text tables; every file written atomically."""
