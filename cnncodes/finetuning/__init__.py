"""Fine-tuning: config, the net with its new head, optimiser groups, the trainer, prediction."""
