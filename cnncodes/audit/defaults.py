"""The audit's option defaults, importable without NumPy (the CLI builds its parser from them)."""

#: cosine similarity at or above which two images are near-duplicates (codes centred on the
#: training mean, MobileNetV2 ImageNet pool codes): calibrated by benchmarks/audit_calibrate.py,
#: see README "Auditing a data set"
DUPLICATE_THRESHOLD = 0.90
#: rows placed on the 2-D map at most (a random sample above)
MAP_ROWS = 2_000
