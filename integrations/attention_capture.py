"""Capture cross-attention maps of a diffusers ``UNet2DConditionModel`` (seed §8).

Forward hooks on the ``to_q`` and ``to_k`` projections of every cross-attention
layer (``attn2``) record the queries (latent positions) and keys (conditioning
tokens) of ONE forward pass; :meth:`AttentionCapture.collect` recomputes the
attention probabilities ``softmax(q k^T * scale)`` from them, averages heads and
batch items, and removes the hooks. This works whatever attention processor
the model uses (SDPA, xformers, a custom one) because it never replaces it,
and works with PEFT LoRA layers on ``to_q``/``to_k`` (the hook sits on the
wrapped module, so the LoRA update is included).

Costs nothing when not armed: no hook is registered between captures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["AttentionCapture", "CaptureError", "find_unet"]


class CaptureError(RuntimeError):
    """The model does not have what a capture needs (e.g. no cross-attention layers)."""


def find_unet(model: Any) -> Any:
    """The denoiser inside ``model``: a pipeline's/LightningModule's ``.unet``, a PEFT wrapper's base, or itself."""
    seen = 0
    while seen < 4:
        seen += 1
        unet = getattr(model, "unet", None)
        if unet is not None and hasattr(unet, "named_modules"):
            model = unet
            continue
        break
    return model


class AttentionCapture:
    """One-shot capture of the cross-attention maps of the next forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        A diffusers UNet (or anything holding one as ``.unet``).
    max_items : int
        At most this many batch items are used (the maps are averaged over them).

    Raises
    ------
    CaptureError
        When the model has no cross-attention (``attn2``) layer with ``to_q``/``to_k``.
    """

    def __init__(self, model: Any, max_items: int = 4) -> None:
        self.unet = find_unet(model)
        self.max_items = int(max_items)
        named = getattr(self.unet, "named_modules", None)
        if named is None:
            raise CaptureError(f"{type(model).__name__} is not a torch module")
        self.layers = [(name, mod) for name, mod in named()
                       if name.split(".")[-1] == "attn2" and hasattr(mod, "to_q") and hasattr(mod, "to_k")
                       and hasattr(mod, "heads")]
        if not self.layers:
            raise CaptureError(f"{type(self.unet).__name__} has no cross-attention (attn2) layers")
        self._handles: list[Any] = []
        self._q: dict[str, Any] = {}
        self._k: dict[str, Any] = {}
        self._sample_hw: tuple[int, int] | None = None
        self.step: int | None = None

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    @property
    def captured(self) -> bool:
        return bool(self._q) and bool(self._k)

    def arm(self, step: int | None = None) -> None:
        """Register the hooks; the next forward pass is recorded (only the first one)."""
        if self._handles:
            return
        self.step = step
        self._q, self._k, self._sample_hw = {}, {}, None
        n = self.max_items

        def pre(module, args, kwargs):
            x = args[0] if args else kwargs.get("sample")
            if self._sample_hw is None and getattr(x, "ndim", 0) == 4:
                self._sample_hw = (int(x.shape[-2]), int(x.shape[-1]))

        self._handles.append(self.unet.register_forward_pre_hook(pre, with_kwargs=True))
        for name, mod in self.layers:
            def hq(module, args, out, _name=name):
                if _name not in self._q:
                    self._q[_name] = out.detach()[:n]

            def hk(module, args, out, _name=name):
                if _name not in self._k:
                    self._k[_name] = out.detach()[:n]

            self._handles.append(mod.to_q.register_forward_hook(hq))
            self._handles.append(mod.to_k.register_forward_hook(hk))

    def disarm(self) -> None:
        """Remove every hook (the model is exactly as before arming)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def collect(self) -> list[dict[str, Any]]:
        """Compute the maps recorded since :meth:`arm`, then disarm and forget the tensors.

        Returns
        -------
        list of dict
            One per layer: ``{"step", "layer", "maps"}`` with ``maps`` float32 of
            shape (T, H, W) — token t's attention probability at each latent cell.
            Empty when nothing was recorded.
        """
        import torch

        self.disarm()
        out: list[dict[str, Any]] = []
        try:
            with torch.no_grad():
                for name, mod in self.layers:
                    q, k = self._q.get(name), self._k.get(name)
                    if q is None or k is None or q.ndim != 3 or k.ndim != 3:
                        continue
                    b = min(q.shape[0], k.shape[0])
                    q, k = q[:b].float(), k[:b].float()
                    heads = int(mod.heads)
                    dq = q.shape[-1] // heads
                    qh = q.reshape(b, q.shape[1], heads, dq).transpose(1, 2)
                    kh = k.reshape(b, k.shape[1], heads, dq).transpose(1, 2)
                    if getattr(mod, "norm_q", None) is not None:
                        qh = mod.norm_q(qh)
                    if getattr(mod, "norm_k", None) is not None:
                        kh = mod.norm_k(kh)
                    scale = float(getattr(mod, "scale", 1.0 / math.sqrt(dq)))
                    probs = torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)  # (b, h, N, T)
                    m = probs.mean(dim=(0, 1)).transpose(0, 1).cpu().numpy()  # (T, N)
                    hgt, wid = self._grid(m.shape[1])
                    out.append({"step": self.step, "layer": name,
                                "maps": m.reshape(m.shape[0], hgt, wid).astype(np.float32)})
        finally:
            self._q, self._k = {}, {}
        return out

    def _grid(self, n: int) -> tuple[int, int]:
        """The (H, W) of a layer with ``n`` positions, from the latent input's aspect ratio."""
        if self._sample_hw is not None:
            h0, w0 = self._sample_hw
            f = math.sqrt(h0 * w0 / n)
            h = max(1, int(round(h0 / f)))
            if h * (n // h) == n:
                return h, n // h
        r = int(round(math.sqrt(n)))
        return (r, r) if r * r == n else (1, n)
