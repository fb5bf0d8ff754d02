"""Image sources (folder trees, flat folders, list files), decoding to RGB, preprocessing and loaders."""
