"""Workflows that compose the library: ``advise`` (the advisor's run + its report; ``--layers
auto``; ``--backbones``), ``baseline`` (extract + train + test + raw pixels +
fall-through), ``predict`` (the dispatch to a linear or a fine-tuned model) and ``compare``
(linear probe vs fine-tuning on one split). Workflows import linear, advisor and finetuning; nothing
below imports them.
"""
