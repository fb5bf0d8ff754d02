"""The advisor's option defaults and choices, each defined once.

No imports: ``cnncodes advise --help`` builds its flags from these without loading NumPy or torch.
The time budgets (``ADVISE_BUDGET``, ``AUTO_LAYER_BUDGET``) live in :mod:`cnncodes.options`.
"""

#: Largest sample the probe sees (``--sample``); with no budget the sample is exactly this.
SAMPLE = 2000
#: Stratified CV folds of the probe (``--folds``).
FOLDS = 5
#: The linear probes (``--probe``) and the default one.
PROBES = ("ridge", "logreg")
PROBE = "logreg"
#: Images shown to the complete network for the ImageNet-head / BatchNorm evidence.
HEAD_SAMPLE = 256

#: The decision rule's default thresholds (see :mod:`cnncodes.advisor.rule`).
SMALL_PER_CLASS = 200
LARGE_PER_CLASS = 1000
LARGE_TOTAL = 10_000
MARGIN_POINTS = 1.0
SE_MULT = 0.0
#: The smallest probe sample that can carry a layer comparison (see
#: :mod:`cnncodes.advisor.rule`, step 0): images in the smallest class (2 per test fold at the
#: default 5 folds) and in all (a CV accuracy's binomial standard error is then at most 5 points).
MIN_COMPARE_PER_CLASS = 10
MIN_COMPARE_IMAGES = 100
#: Below this median per class advise refuses: nothing can be probed.
MIN_PROBE_PER_CLASS = 2

#: The similarity votes' thresholds (see :mod:`cnncodes.advisor.similarity`; calibrated in
#: benchmarks/bench_similarity.py): LEEP share at least, code gain (points) at least; codes losing
#: to raw pixels by more than SIM_CODE_LOSS points make the data dissimilar.
SIM_LEEP_SHARE = 0.5
SIM_CODE_GAIN = 10.0
SIM_CODE_LOSS = 1.0
