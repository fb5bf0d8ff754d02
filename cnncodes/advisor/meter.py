"""The complete pretrained network's own view of a sample (:class:`PretrainedMeter`): (a) the
ImageNet head's predictions (LEEP and entropy) and (b) how far the data's BatchNorm statistics are
from ImageNet's. Needs torch; :mod:`cnncodes.advisor.evidence` (sizes) does not."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones.factory import build_model
from ..backbones.registry import BackboneSpec
from ..backbones.weights import ResolvedWeights, load_weights
from ..sources.loader import normalize_batch


def _final_linear(model: nn.Module) -> nn.Linear | None:
    """The network's classification layer: its last ``nn.Linear`` (None if it has none)."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


class PretrainedMeter:
    """Runs the complete network (with its head) on a sample of images and accumulates:

    * the ImageNet head's softmax: top-1 probability, normalised entropy, predicted category;
    * per BatchNorm layer, the per-channel mean and variance of its *input* over the sample, to
      compare with the running statistics it learnt during pretraining.

    A fresh copy of the network is built (the caller's extractor and RNG are not touched).
    """

    def __init__(self, spec: BackboneSpec, resolved: ResolvedWeights, *,
                 device: torch.device | str = "cpu"):
        self.spec = spec
        self.resolved = resolved
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            model = build_model(spec, resolved.id)
        load_weights(model, spec, resolved)
        # torch's Module.to overloads lack (device, memory_format) together; Module.to takes them
        self.model = model.eval().to(self.device,  # type: ignore[call-overload]
                                     memory_format=torch.channels_last)
        self.bns = [(n, m) for n, m in self.model.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                    and m.running_mean is not None]
        # per-channel float64 accumulators on the model's device: no host copy per layer per
        # batch (read back once, in the statistics); see _hook for the per-batch sums
        self._sum = [torch.zeros(m.num_features, dtype=torch.float64, device=self.device)
                     for _, m in self.bns]
        self._sq = [torch.zeros(m.num_features, dtype=torch.float64, device=self.device)
                    for _, m in self.bns]
        self._cnt = [0] * len(self.bns)
        self._handles = [m.register_forward_pre_hook(self._hook(i))
                         for i, (_, m) in enumerate(self.bns)]
        self.head = _final_linear(self.model)
        self.features: list[np.ndarray] = []  # the head's input (penultimate features)
        if self.head is not None:
            self._handles.append(self.head.register_forward_pre_hook(self._feature_hook))
        self.probs: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self.entropy: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.n_outputs: int | None = None

    def _hook(self, i: int) -> Any:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            # float64 maps on the CPU (as before); on a GPU, float32 per-batch sums (fp64 maps are
            # slow on consumer GPUs; torch's tree reductions keep ~1e-6 relative), added in fp64
            x = inp[0].detach()
            x = x.to(torch.float64) if x.device.type == "cpu" else x.float()
            dims = [0] + list(range(2, x.ndim))
            self._sum[i] += x.sum(dim=dims).to(torch.float64)
            self._sq[i] += (x * x).sum(dim=dims).to(torch.float64)
            self._cnt[i] += x.numel() // x.shape[1]

        return hook

    def _feature_hook(self, _m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        self.features.append(inp[0].detach().flatten(1).float().cpu().numpy())

    @property
    def n_seen(self) -> int:
        return int(sum(len(p) for p in self.pred))

    def update(self, images: torch.Tensor, labels: np.ndarray, pp: Any) -> None:
        """Add a uint8 NCHW batch (``pp`` = the extractor's preprocessing)."""
        x = normalize_batch(images.to(self.device), pp, channels_last=True)
        with torch.inference_mode():
            logits = self.model(x).float()
        if logits.ndim != 2:
            return
        self.n_outputs = int(logits.shape[1])
        p = torch.softmax(logits, dim=1)
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1) / math.log(max(2, logits.shape[1]))
        self.probs.append(p.cpu().numpy())
        self.top1.append(p.max(1).values.cpu().numpy())
        self.entropy.append(ent.cpu().numpy())
        self.pred.append(p.argmax(1).cpu().numpy())
        self.labels.append(np.asarray(labels))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def head_evidence(self) -> dict[str, Any]:
        """ImageNet-head confidence, entropy and agreement with the user's classes."""
        from sklearn.metrics import normalized_mutual_info_score

        if not self.pred:
            return {"available": False, "reason": "no images reached the head"}
        if self.n_outputs != 1000:
            return {"available": False, "meaningful": False,
                    "reason": f"the network's head has {self.n_outputs} outputs, not ImageNet's "
                              "1000 classes"}
        top1, ent = np.concatenate(self.top1), np.concatenate(self.entropy)
        pred, lab = np.concatenate(self.pred), np.concatenate(self.labels)
        cats = self.resolved.categories
        vals, cnt = np.unique(pred, return_counts=True)
        top = sorted(zip(cnt.tolist(), vals.tolist(), strict=True), reverse=True)[:5]
        return {
            "available": True, "meaningful": True, "n_images": int(top1.size),
            "mean_top1_prob": round(float(top1.mean()), 4),
            "median_top1_prob": round(float(np.median(top1)), 4),
            "frac_top1_above_0.5": round(float((top1 > 0.5).mean()), 4),
            "mean_normalized_entropy": round(float(ent.mean()), 4),
            "distinct_top1_categories": int(vals.size),
            "nmi_classes_vs_imagenet": round(float(normalized_mutual_info_score(lab, pred)), 4),
            "top_categories": [{"category": cats[v] if cats and v < len(cats) else int(v),
                                "share": round(c / top1.size, 4)} for c, v in top],
            "top1_hist": np.histogram(top1, bins=10, range=(0, 1))[0].tolist(),
            **self._transfer_evidence(lab),
            "note": "LEEP share: how much of the label entropy the ImageNet head's predictions "
                    "explain; domain EMD: cosine earth mover's distance from the class means to "
                    "the head's class rows (0 = on ImageNet classes); confidence and entropy "
                    "alone are side evidence (a confident head can be confidently wrong)",
        }

    def _transfer_evidence(self, lab: np.ndarray) -> dict[str, Any]:
        """LEEP of the head's softmax and Cui et al.'s domain distance (the head's weight rows
        as the source class means), see :mod:`cnncodes.advisor.transfer`."""
        from .transfer import domain_distance, leep, leep_share

        probs = np.concatenate(self.probs)
        value = leep(probs, lab)
        out: dict[str, Any] = {"leep": round(value, 4),
                               "leep_share": round(leep_share(value, lab), 4)}
        if self.head is not None and self.features:
            feats = np.concatenate(self.features)[:lab.size]
            rows = self.head.weight.detach().double().cpu().numpy()
            if feats.shape[1] == rows.shape[1]:
                dist = domain_distance(feats, lab, rows)
                out.update(domain_emd=round(dist["emd"], 4),
                           domain_nearest=round(dist["nearest"], 4))
        return out

    def bn_evidence(self) -> dict[str, Any]:
        """Distance between the data's BN-input statistics and the running (pretraining) ones."""
        if not self.bns:
            return {"available": False,
                    "reason": f"{self.spec.name} has no BatchNorm layers (nothing to compare)"}
        per = []
        for i, (name, m) in enumerate(self.bns):
            if not self._cnt[i]:
                continue
            mu = self._sum[i].cpu() / self._cnt[i]
            var = (self._sq[i].cpu() / self._cnt[i] - mu * mu).clamp_min(0) + m.eps
            assert m.running_mean is not None and m.running_var is not None  # as kept in bns
            rm = m.running_mean.detach().double().cpu()
            rv = m.running_var.detach().double().cpu() + m.eps
            kl = 0.5 * (torch.log(rv / var) + (var + (mu - rm) ** 2) / rv - 1)
            z = (mu - rm).abs() / rv.sqrt()
            per.append({"layer": name, "kl": round(float(kl.mean()), 4),
                        "mean_shift_z": round(float(z.mean()), 4),
                        "log_var_ratio": round(float(torch.log(var / rv).mean()), 4)})
        if not per:
            return {"available": False, "reason": "no BatchNorm layer saw any input"}
        kls = np.array([p["kl"] for p in per])
        thirds = np.array_split(kls, 3) if kls.size >= 3 else [kls]
        return {
            "available": True, "meaningful": True, "n_images": self.n_seen,
            "n_bn_layers": len(per), "mean_kl": round(float(kls.mean()), 4),
            "median_kl": round(float(np.median(kls)), 4),
            "kl_by_depth_thirds": [round(float(t.mean()), 4) for t in thirds],
            "mean_shift_z": round(float(np.mean([p["mean_shift_z"] for p in per])), 4),
            "per_layer": per,
            "note": "Gaussian KL(data || running stats) per channel, averaged; 0 = the data "
                    "looks like the pretraining data to that layer. Depends on the input size "
                    "too: compare data sets at the same --input-size; side evidence only",
        }
