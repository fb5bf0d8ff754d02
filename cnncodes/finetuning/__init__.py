"""Fine-tuning a backbone end to end (the fall-through when codes + a linear classifier are not
enough). Modules: ``config`` (FinetuneConfig), ``split`` (train/val/test), ``net`` (new head,
stages, FinetuneNet, building it), ``model_file`` (model.pt), ``optim`` (groups, discriminative
learning rates, schedule), ``data`` (datasets, sampler, loaders), ``evaluation``, ``plots``,
``ddp`` (torchrun helpers), ``trainer`` (Trainer: step / train_epoch / evaluate / checkpoint /
resume), ``checkpoint`` (TrainState, the resume precision check), ``run_report`` (report.json of
a run), ``run`` (finetune, FinetuneResult), ``predict`` (predict_images). Nothing here imports
``cnncodes.linear`` or ``cnncodes.workflows`` (the probe-vs-fine-tune comparison lives in
``cnncodes.workflows.compare``).
"""
