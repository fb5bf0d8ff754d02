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
* :mod:`.verdict`: :class:`Verdict`, what the rule decides, as enums and numbers;
* :mod:`.rule`: the pure decision rule (:class:`Thresholds`, :func:`decide` -> :class:`Verdict`):
  quadrant from (a) and size, layer from the probe (b) with its confidence interval;
* :mod:`.advice`: :class:`Advice`, the result (data; its JSON is made in :mod:`cnncodes.report`);
* :mod:`.plots`: ``advice.png`` and the report folder;
* :mod:`.run`: :func:`run_advisor` (measure and decide), :func:`recorded_advice` (the choice of
  an earlier ``--layers auto``);
* :mod:`.ranking`: ``advise --backbones``, every backbone's layers ranked (the pure parts).

The advisor imports sources, backbones and codes, never linear, finetuning or anything higher.
The verdict's explanation and next commands are not made here: it is rendered by
:mod:`cnncodes.report.verdict_text` (the text report is
:func:`cnncodes.report.advice.format_advice`, the JSON
:func:`~cnncodes.report.advice.advice_json`); the runs that write reports
(``advise``, ``choose_layer``, ``rank_backbones``) are in :mod:`cnncodes.workflows.advice`.
"""
