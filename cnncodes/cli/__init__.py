"""The ``cnncodes`` command line (thin: parse -> one library call -> print).

``main`` (in :mod:`.main`) dispatches to one module per command group: :mod:`.codes` (models,
extract, info), :mod:`.linear` (train, evaluate, predict, baseline), :mod:`.advise`,
:mod:`.finetune`; :mod:`.common` holds the shared option groups.
"""

from ..linear.array_api_env import enable_array_api

# the command owns its process: switch SciPy's array API support on (GPU model selection) before
# any subcommand imports SciPy; the library itself never changes the environment
enable_array_api()

from .main import main  # noqa: E402

__all__ = ["main"]
