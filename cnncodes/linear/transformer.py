"""``CNNCodes``: a scikit-learn transformer from image paths to CNN codes.

It drops into a ``Pipeline`` in front of any estimator and works inside ``GridSearchCV``::

    from sklearn.pipeline import make_pipeline
    from sklearn.linear_model import LogisticRegression
    pipe = make_pipeline(CNNCodes(layer="pool", input_size=112), LogisticRegression())
    pipe.fit(train_paths, y_train).score(test_paths, y_test)

Codes are computed through the same :class:`~cnncodes.CodeExtractor` path as ``extract`` and are
cached, so the many fits of a grid search do not re-run the backbone:

* ``cache="memory"`` (default): a per-process cache keyed by the extraction configuration (backbone,
  weights checksum, layer, pooling, preprocessing) and by each file's path, size and mtime; clones
  made by ``GridSearchCV`` share it. :func:`clear_memory_cache` empties it.
* ``cache="codes.h5"``: an HDF5 code store. A store created here (absolute paths) is extended with
  missing images through :func:`cnncodes.extract` (crash-safe, resumable); a store made by
  ``cnncodes extract`` from a folder is only read, missing images are computed in memory (so a
  store whose extraction was stopped is read as it is: its missing rows are computed, never left
  out).
* ``cache=None``: no caching.

The network itself is built once per process and configuration (backbone, weights file, layer,
pooling, input size, device, precision, engine, decoder, threads) and shared by every clone
(:func:`cnncodes.codes.shared.shared_extractor`, an LRU of two networks): a grid over the
classifier's parameters on cached codes costs what the classifier costs. ``fit`` builds nothing
when the configuration was built before in the process or when a store cache already holds the
layer (the description then comes from the torch-free extractor when its graph is cached, else
from the registry's metadata); the network is built only when
``transform`` has images to compute. :func:`clear_network_cache` forgets the built networks.

When the sealed, checked ONNX graph of the configuration is cached (an earlier run exported it),
the "network" is the torch-free :class:`~cnncodes.codes.light.LightExtractor` (the rules of
``extract``: CPU, fp32, decoder auto|pil, ``CNNCODES_TORCH_FREE`` not ``0``, its start-up check
passed), and fit/transform import neither torch nor torchvision. Its codes, provenance and
memory-cache key are the torch path's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import SourceError
from ..codes.numerics import compat_value
from ..options import BackboneOptions, RuntimeOptions
from ..sources.folders import ImageSource
from ..stats import plural

log = logging.getLogger(__name__)

_MEMORY: dict[tuple, dict[str, tuple[tuple[int, int], np.ndarray]]] = {}
#: (provenance, code dimension) of each configuration built in this process (small; no network)
_DESCRIBED: dict[tuple, tuple[dict[str, Any], int]] = {}
_LOCK = threading.Lock()
#: Counters of the memory cache (``hits``/``misses`` in rows), for diagnostics and tests.
STATS = {"hits": 0, "misses": 0, "extracted": 0}
_B, _R = BackboneOptions(), RuntimeOptions()


def clear_memory_cache() -> None:
    """Forget every code held by the ``cache="memory"`` caches of this process."""
    with _LOCK:
        _MEMORY.clear()
        for k in STATS:
            STATS[k] = 0


def clear_network_cache() -> None:
    """Forget the networks built by ``CNNCodes`` in this process (the next fit builds again)."""
    from ..codes.shared import clear_shared_extractors

    with _LOCK:
        _DESCRIBED.clear()
    clear_shared_extractors()


def _stat_key(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def _as_paths(X: Any) -> list[str]:
    """Image paths from a list/tuple/1-d array (or an (N, 1) column) of str/PathLike."""
    if isinstance(X, (str, os.PathLike)):
        raise ValueError(f"CNNCodes expects a sequence of image paths, got the single path "
                         f"{os.fspath(X)!r}; wrap it in a list.")
    arr = np.asarray(X, dtype=object)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"CNNCodes expects a 1-d sequence of image paths; got an array of shape "
                         f"{arr.shape}.")
    out = []
    for p in arr.tolist():
        if not isinstance(p, (str, os.PathLike)):
            raise ValueError(f"CNNCodes expects image paths (str or Path); got {type(p).__name__} "
                             f"{p!r}.")
        out.append(os.path.abspath(os.path.expanduser(os.fspath(p))))
    return out


def _describe_light(bopts: BackboneOptions, ropts: RuntimeOptions) -> dict[str, Any] | None:
    """What :func:`~cnncodes.codes.extractor.describe_codes` gives (provenance less ``engine``,
    plus ``dims``), from the shared torch-free extractor (started now, so ``transform`` reuses
    it); None when the configuration cannot take that path (``describe_codes`` then says it)."""
    from ..codes.shared import shared_light

    ext = shared_light(bopts, ropts)
    if ext is None:
        return None
    prov = ext.provenance()
    prov.pop("engine", None)
    return {**prov, "dims": ext.dims}


class CNNCodes(TransformerMixin, BaseEstimator):
    """Transform image paths into CNN codes of one layer of a pretrained backbone.

    Args:
        backbone, weights, layer, pooling, input_size: as in :func:`cnncodes.extract` (``layer``
            is a single layer name; default the backbone's default layer). ``weights="random"``
            is the fixed, seeded random network of :func:`cnncodes.create_backbone`: the same in
            every build, so its codes may be cached in memory or in a store like any others.
        batch_size, num_workers, device, precision, threads, decoder, max_pixels, engine: how
            codes are computed (the fields of :class:`~cnncodes.options.RuntimeOptions`).
        cache: ``"memory"``, a path to an ``.h5`` store, or None (see the module docstring).
        on_error: ``"raise"`` (default: a :class:`~cnncodes.errors.SourceError`, a ValueError,
            naming the unreadable files) or ``"zeros"`` (a zero row and a logged warning per
            unreadable image, so rows stay aligned with y), also when every image fails.

    Attributes:
        layer_: the layer used.  n_features_out_: code dimension.
        provenance_: backbone, weights id and checksum, preprocessing... of the codes.
    """

    # defaults are those of cnncodes.options (one place). num_workers=None is the shared
    # automatic rule (loader_workers): no worker processes for the one-batch transforms of
    # cross-validation folds, workers only for many images.
    def __init__(self, backbone: str = _B.backbone, *, weights: str | None = _B.weights,
                 layer: str | None = None, pooling: str = _B.pooling,
                 input_size: int | None = _B.input_size, batch_size: int = _R.batch_size,
                 num_workers: int | None = _R.num_workers, device: str = _R.device,
                 precision: str = _R.precision, threads: int | None = _R.threads,
                 decoder: str = _R.decoder, max_pixels: int | None = _R.max_pixels,
                 cache: str | os.PathLike | None = "memory", on_error: str = "raise",
                 engine: str = _R.engine):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.input_size = input_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.precision = precision
        self.threads = threads
        self.decoder = decoder
        self.max_pixels = max_pixels
        self.cache = cache
        self.on_error = on_error
        self.engine = engine

    # --- sklearn protocol ----------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> CNNCodes:
        """Describe the codes (layer, dimension, provenance); no image is read, codes are computed
        by ``transform``. The network is built at most once per configuration and process (see
        the module docstring), and not at all when a store cache already holds this layer."""
        from ..backbones.registry import default_layer

        _as_paths(X)
        if self.on_error not in ("raise", "zeros"):
            raise ValueError(f"on_error must be 'raise' or 'zeros'; got {self.on_error!r}.")
        if self.layer is not None and ("," in str(self.layer) or
                                       not isinstance(self.layer, str)):
            raise ValueError(f"CNNCodes reads one layer; got layer={self.layer!r}.")
        default = default_layer(self.backbone)  # the catalog's: no torch import
        for stale in ("provenance_", "n_features_out_"):  # a refit describes afresh
            self.__dict__.pop(stale, None)
        self.layer_ = self.layer or default
        prov, dim = self._describe()
        self.provenance_ = prov
        self.n_features_out_ = dim
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Codes (N, D) float32 of the images ``X`` (one row per path, in order)."""
        check_is_fitted(self, "provenance_")
        paths = _as_paths(X)
        codes = np.zeros((len(paths), self.n_features_out_), np.float32)
        done = np.zeros(len(paths), bool)
        failures: dict[str, str] = {}
        key = self._memory_key()
        if key is not None:
            self._from_memory(key, paths, codes, done)
        store_path = self._store_cache()
        if store_path is not None and not done.all():
            failures.update(self._from_store(store_path, paths, codes, done))
        todo = [i for i in np.flatnonzero(~done) if paths[i] not in failures]
        if todo:
            failures.update(self._compute([paths[i] for i in todo], todo, codes, done))
            if key is not None:
                self._to_memory(key, [paths[i] for i in todo if done[i]], codes[[i for i in todo
                                                                               if done[i]]])
        bad = [p for p in paths if p in failures]
        if bad:
            listing = "; ".join(f"{p}: {failures[p]}" for p in dict.fromkeys(bad[:5]))
            if self.on_error == "raise":
                raise SourceError(f"{len(bad)} of {plural(len(paths), 'image')} could not be read "
                                  f"({listing}"
                                 f"{' ...' if len(bad) > 5 else ''}). Remove them, or use "
                                 "CNNCodes(on_error='zeros') to give them zero codes.")
            log.warning("%d images could not be read and get zero codes: %s", len(bad), listing)
        return codes

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "provenance_")
        return np.array([f"{self.layer_}_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.requires_fit = True
        # codes are float32 whatever the input (paths have no dtype to preserve)
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    # the extractor (a torch module with forward hooks, or an ONNX Runtime session) is rebuilt
    # after unpickling, not pickled
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_extractor", None)
        return state

    # --- internals -----------------------------------------------------------------------------

    def _options(self) -> tuple[BackboneOptions, RuntimeOptions]:
        """The parameters as the shared options objects (validated there)."""
        layer = getattr(self, "layer_", None) or self.layer
        bopts = BackboneOptions(backbone=self.backbone, weights=self.weights,
                                layers=None if layer is None else (layer,),
                                pooling=self.pooling, input_size=self.input_size)
        ropts = RuntimeOptions(batch_size=self.batch_size, num_workers=self.num_workers,
                               device=self.device, precision=self.precision,
                               threads=self.threads, decoder=self.decoder,
                               max_pixels=self.max_pixels, engine=self.engine)
        return bopts, ropts

    def _describe(self) -> tuple[dict[str, Any], int]:
        """(provenance, code dimension): from an earlier build of this configuration in this
        process, when a store cache already has this layer from the torch-free extractor (its
        graph cached; started, not built) or else the registry's metadata (no build; the store's
        own check then runs in ``transform``), else from building the network."""
        import copy

        from ..codes.shared import extractor_key

        bopts, ropts = self._options()
        key = extractor_key(bopts, ropts)
        with _LOCK:
            hit = _DESCRIBED.get(key)
        if hit is not None:
            return copy.deepcopy(hit[0]), hit[1]
        store = self._store_cache()
        if store is not None and store.is_file() and self._store_has_layer(store):
            desc = _describe_light(bopts, ropts)
            if desc is None:
                from ..codes.extractor import describe_codes

                desc = describe_codes(bopts, ropts)
            if desc is not None:
                dims = desc.pop("dims")
                return desc, int(dims[self.layer_])
        ext = self._get_extractor()
        return copy.deepcopy(ext.provenance()), int(ext.dims[self.layer_])

    def _store_has_layer(self, store: Path) -> bool:
        from ..codes.store import FeatureStore

        try:
            return self.layer_ in FeatureStore(store).layers
        except Exception:  # noqa: BLE001 - not a readable store: the build path says why
            return False

    def _get_extractor(self) -> Any:
        """The shared network of this configuration (built on first use in the process)."""
        from ..codes.shared import extractor_key, shared_extractor

        bopts, ropts = self._options()
        ext = shared_extractor(bopts, ropts)
        dim = int(ext.dims[self.layer_])
        known = getattr(self, "n_features_out_", None)
        if known is not None and known != dim:
            raise RuntimeError(f"CNNCodes: the {self.backbone} layer {self.layer_} gives codes of "
                               f"{dim} values, its metadata said {known}; report this bug.")
        with _LOCK:
            _DESCRIBED[extractor_key(bopts, ropts)] = (ext.provenance(), dim)
            while len(_DESCRIBED) > 64:
                _DESCRIBED.pop(next(iter(_DESCRIBED)))
        return ext

    def _store_cache(self) -> Path | None:
        if self.cache is None or (isinstance(self.cache, str) and self.cache == "memory"):
            return None
        if not isinstance(self.cache, (str, os.PathLike)):
            raise ValueError(f"cache must be 'memory', None or a path to an .h5 store; got "
                             f"{self.cache!r}.")
        return Path(self.cache)

    def _memory_key(self) -> tuple | None:
        if not (isinstance(self.cache, str) and self.cache == "memory"):
            return None
        p = self.provenance_
        # "random" is a fixed network (seeded init, cnncodes.backbones.RANDOM_INIT_SEED)
        weights = p.get("weights_sha256") or p.get("weights")
        return (p["backbone"], weights, self.layer_, p["layer_info"][self.layer_]["pooling"],
                tuple(sorted((k, str(v)) for k, v in p["preprocessing"].items())),
                compat_value(p, "numerics"), compat_value(p, "decoding"))

    def _from_memory(self, key: tuple, paths: list[str], codes: np.ndarray,
                     done: np.ndarray) -> None:
        with _LOCK:
            table = _MEMORY.get(key, {})
            for i, p in enumerate(paths):
                hit = table.get(p)
                if hit is not None and hit[0] == _stat_key(p):
                    codes[i] = hit[1]
                    done[i] = True
            STATS["hits"] += int(done.sum())
            STATS["misses"] += int((~done).sum())

    def _to_memory(self, key: tuple, paths: list[str], rows: np.ndarray) -> None:
        with _LOCK:
            table = _MEMORY.setdefault(key, {})
            for p, row in zip(paths, rows, strict=True):
                table[p] = (_stat_key(p), row.copy())

    def _compute(self, paths: list[str], positions: Sequence[int | np.integer], codes: np.ndarray,
                 done: np.ndarray) -> dict[str, str]:
        from ..codes.batches import extract_arrays

        src = ImageSource(Path("/"), list(paths), np.full(len(paths), -1, np.int64), [], "list")
        res = extract_arrays(src, extractor=self._get_extractor(), runtime=self._options()[1])
        if len(res.index):  # none when every image failed (the rows stay zero, not done)
            pos = np.asarray(positions)[res.index]
            codes[pos] = res.codes[self.layer_]
            done[pos] = True
        STATS["extracted"] += len(res.index)
        return {os.path.normpath(p): r for p, r in res.failures}

    def _from_store(self, store_path: Path, paths: list[str], codes: np.ndarray,
                    done: np.ndarray) -> dict[str, str]:
        from ..codes.extraction import extract
        from ..codes.store import FeatureStore
        from ..errors import StoreMismatchError

        ours = not store_path.exists()
        if not ours:
            st = FeatureStore(store_path)
            ours = os.fspath(st.root) == "/"
            self._check_store(st)
        if ours:
            missing = [p for i, p in enumerate(paths) if not done[i]]
            layers = [self.layer_]
            if store_path.is_file():
                existing = FeatureStore(store_path).layers
                layers = existing if self.layer_ in existing else layers
            src = ImageSource(Path("/"), sorted(set(missing)),
                              np.full(len(set(missing)), -1, np.int64), [], "list")
            try:
                bopts, ropts = self._options()
                extract(src, store_path, backbone=bopts.replace(layers=tuple(layers)),
                        runtime=ropts, command="cnncodes.CNNCodes")
            except StoreMismatchError as e:
                raise StoreMismatchError(
                    f"CNNCodes(cache={os.fspath(store_path)!r}): {e}") from None
        st = FeatureStore(store_path)
        if not ours:
            self._check_store(st)
        row_of = {os.path.normpath(os.fspath(p)): r for r, p in enumerate(st.abspaths())}
        want = [(i, row_of[p]) for i, p in enumerate(paths) if not done[i] and p in row_of]
        if want:
            order = sorted(set(r for _, r in want))
            # an incomplete store is fine here: the rows it lacks are computed, not left out
            X, _ = st.load(self.layer_, rows=np.asarray(order), allow_incomplete=True)
            at = {r: k for k, r in enumerate(order)}
            for i, r in want:
                codes[i] = X[at[r]]
                done[i] = True
        return {os.path.normpath(p): r for p, r in st.failures} if ours else {}

    def _check_store(self, st: Any) -> None:
        """The store's codes must be this transformer's (the one compatibility check)."""
        from ..codes.store import check_store_compatible

        check_store_compatible(st.path, dict(self.provenance_),
                               fields=("backbone", "weights_sha256", "preprocessing",
                                       "numerics", "decoding"),
                               layer=self.layer_, journal=False,
                               what=f"CNNCodes(cache={os.fspath(st.path)!r})",
                               fix="Pass another cache file or matching options.")

