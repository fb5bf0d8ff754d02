"""What the numbers of a code depend on besides the network: the arithmetic (precision, and the
device for reduced precision) and the JPEG decoder. They are compatibility fields of a store,
of a trained model's record and of ``CNNCodes``' in-process cache.

What may mix (decided from what differs, see README "Devices, precision and decoders"):

* ``numerics``: ``fp32`` on the CPU and ``fp32`` on CUDA may mix: TF32 is switched off for
  every forward pass that makes codes (:func:`strict_fp32`), so both are IEEE float32 and differ
  only by summation order (relative ~1e-6, like two CPU thread counts). ``fp16`` and ``bf16``
  (autocast) differ from fp32 by ~1e-3 and from each other, and CPU and CUDA autocast run
  different kernels: they are named with their device (``fp16/cuda``) and mix with nothing else.
  ``int8`` (a quantised ONNX Runtime graph on the CPU, :mod:`cnncodes.codes.quantise`) mixes
  with itself only, and a store continues with its own int8 graph.
* ``decoding``: ``cpu`` (PIL or torchvision's libjpeg-turbo: the same IDCT and chroma
  interpolation; the existing tests hold them to cosine >= 0.9999) may mix with itself only;
  ``cpu-dct`` (the same decoders, with JPEGs at least twice the resize decoded DCT-scaled, see
  :mod:`cnncodes.sources.dct`: codes within cosine 0.999 of ``cpu`` on photos) mixes with itself
  only; ``nvjpeg`` (chroma upsampled by replication, ~1e-3 in cosine at colour edges) mixes with
  nothing else.

Stores and models written before these fields existed were all made on the CPU path the tests
pin (fp32, PIL or libjpeg-turbo): a missing field reads as :data:`COMPAT_DEFAULTS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a device is looked at: reading a store needs none
    import torch

#: What a store or model without the fields was made with (every such file predates CUDA support
#: being recorded; see the module docstring).
COMPAT_DEFAULTS: dict[str, str] = {"numerics": "fp32", "decoding": "cpu"}

#: Decoder names recorded in a run (``decoder`` of the run record) -> their ``decoding`` family.
DECODER_FAMILY = {"pil": "cpu", "libjpeg-turbo": "cpu", "nvjpeg": "nvjpeg",
                  "pil+dct": "cpu-dct", "libjpeg-turbo+dct": "cpu-dct"}
#: suffix of a CPU decoder name when large JPEGs are decoded DCT-scaled
DCT_SUFFIX = "+dct"


def numerics(precision: str, device: torch.device | str) -> str:
    """``fp32`` on any device (TF32 off); ``int8`` (a quantised ONNX Runtime graph on the CPU);
    ``<precision>/<device type>`` for fp16 and bf16."""
    import torch

    if precision in ("fp32", "int8"):  # int8: ONNX Runtime on the CPU, mixes with itself only
        return precision
    return f"{precision}/{torch.device(device).type}"


def decoding(decoder: str) -> str:
    """The ``decoding`` family of a decoder name (``pil``, ``libjpeg-turbo``, ``nvjpeg``)."""
    try:
        return DECODER_FAMILY[decoder]
    except KeyError:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of "
                         f"{', '.join(DECODER_FAMILY)}") from None


def planned_decoder(option: str, device: torch.device | str, interpolation: str,
                    dct: bool = False) -> str:
    """The decoder ``make_dataset`` picks for a folder or list source (tar shards always use
    PIL): ``pil``, or the tensor path's ``libjpeg-turbo`` (CPU) / ``nvjpeg`` (CUDA); a CPU
    decoder gets :data:`DCT_SUFFIX` when ``dct`` (large JPEGs DCT-scaled)."""
    from ..sources.preprocessing import TENSOR_INTERPOLATIONS

    if option == "pil" or interpolation not in TENSOR_INTERPOLATIONS:
        name = "pil"
    elif str(device).startswith("cuda"):
        return "nvjpeg"
    else:
        name = "libjpeg-turbo"
    return name + DCT_SUFFIX if dct else name


def compat_value(prov: Mapping[str, Any], field: str) -> Any:
    """``prov[field]``, or the default of a file made before the field existed."""
    v = prov.get(field)
    return COMPAT_DEFAULTS.get(field) if v is None else v


def tf32_state() -> tuple[bool, bool]:
    """(matmul, cuDNN) TF32 switches as the caller has them."""
    import torch

    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@contextlib.contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convolutions inside the block on a CUDA device (PyTorch
    allows it for convolutions by default: codes would move by ~1e-3), the caller's switches
    restored after. A no-op on the CPU."""
    import torch

    if torch.device(device).type != "cuda":
        yield
        return
    old = tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def cudnn_autotune(device: torch.device) -> Iterator[None]:
    """``cudnn.benchmark`` on inside the block on CUDA (extraction batches have one fixed shape,
    so cuDNN times its algorithms once per shape and reuses the fastest), the caller's setting
    restored after. The algorithm chosen may differ between runs: fp32 codes then differ by
    summation order only (~1e-6 relative, what ``fp32`` mixing allows). A no-op on the CPU."""
    import torch

    if torch.device(device).type != "cuda":
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def int8_refusal(where: str) -> Exception:
    """The error of a path that cannot make int8 codes (only ``extract`` calibrates)."""
    from ..errors import OptionError

    return OptionError(f"--precision int8 codes are made by extract (and baseline, which "
                       f"extracts) only: {where} has no run images to calibrate on. Extract into "
                       "a store with --precision int8 and use the store, or use --precision "
                       "fp32.")
