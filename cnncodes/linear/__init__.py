"""Linear classifiers on cached CNN codes.

The classifier is a scikit-learn :class:`~sklearn.pipeline.Pipeline` (optional L2 normalisation ->
optional standardisation -> optional PCA -> ``LogisticRegression`` (lbfgs, multinomial) or
``LinearSVC``) whose ``C`` is chosen by ``GridSearchCV`` over a log-spaced grid with stratified
k-fold and refitted on all training rows.

A fitted model is a :class:`TrainedModel`; on disk it is a zip of ``.npy`` arrays and one JSON
document that holds no code (:mod:`~cnncodes.linear.model_format`): the pipeline's steps with their
fitted arrays, the class names, the layer, the provenance of the codes it was trained on (backbone,
weights id + sha256, pooling, preprocessing...) and the split. Whatever reads codes for a model
(:func:`evaluate`, :func:`predict`) checks them against that provenance first and refuses codes from
another backbone/weights/layer/pooling/preprocessing with an error naming the differing field.
Model files of older cnncodes (joblib pickles) load only with ``trust_pickle=True``.

Modules: ``options`` (ClassifierOptions), ``grids`` (C grids, folds), ``pipelines``,
``array_api`` (where fits run), ``selection`` (fit_codes), ``model_file`` (TrainedModel,
save/load, provenance checks), ``model_format`` (the file format), ``training`` (train),
``evaluation`` (evaluate), ``prediction`` (a linear model's predictions), ``pixels`` (raw-pixel
baseline), ``transformer`` (CNNCodes).
Nothing here imports the advisor, fine-tuning or the workflows.
"""
