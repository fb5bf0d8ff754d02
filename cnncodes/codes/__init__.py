"""CNN codes: the CodeExtractor every path uses, batched extraction with resume, and the HDF5
store."""
