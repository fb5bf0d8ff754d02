"""Workflows composed of library calls: baseline, predict dispatch, linear probe vs fine-tune."""
