"""The advisor: which layer, and codes or fine-tuning, measured on the user's data.

One module per concept, data flowing down the list:

* :mod:`.defaults`: option defaults and choices (no imports; the CLI reads them);
* :mod:`.evidence`: the data set's size (:class:`SizeInfo`) and the pretrained network's view of
  it (:class:`PretrainedMeter`: ImageNet head, BatchNorm statistics);
* :mod:`.sample`: the time budget and the stratified sample it buys;
* :mod:`.transfer`: transferability scores written from the papers (LogME, LEEP, Cui et al.'s
  domain EMD), pure NumPy/SciPy;
* :mod:`.probe`: the cross-validated linear probe of every candidate layer (the advisor's own
  small probes, not :mod:`cnncodes.linear`'s), with LogME beside each layer;
* :mod:`.similarity`: answer (a), the pure similarity verdict (LEEP share, code gain);
* :mod:`.rule`: the pure decision rule (:class:`Thresholds`, :func:`decide`, :class:`Decision`):
  quadrant from (a) and size, layer from the probe (b) with its confidence interval;
* :mod:`.advice`: :class:`Advice`, the result and its JSON;
* :mod:`.plots`: ``advice.png`` and the report folder;
* :mod:`.run`: :func:`advise`, and ``--layers auto`` (:func:`choose_layer`,
  :func:`recorded_advice`);
* :mod:`.ranking`: ``advise --backbones``, every backbone's layers ranked (:func:`rank_backbones`).

The advisor imports sources, backbones and codes, never linear, finetuning or anything higher.
The text report is :func:`cnncodes.report.advice.format_advice`.
"""
