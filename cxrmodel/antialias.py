"""Anti-aliased downsampling: BlurPool (Zhang 2019) and FLC / ASAP frequency pooling.

All modules map float ``[N, C, H, W]`` to ``[N, C, ceil(H/2), ceil(W/2)]`` (even sizes:
exactly half) and export to ONNX with standard operators only (Pad, Conv, MatMul).

* :class:`BlurPool2d`: depthwise binomial low-pass, then stride 2 (Zhang, "Making
  convolutional networks shift-invariant again", ICML 2019). Reflect padding as in the
  reference ``antialiased-cnns``; filter length 4 (``[1, 3, 3, 1]``, the 2x2 average
  pool's box convolved with ``[1, 2, 1]``, centred where the average pool's window is)
  or 3 (``[1, 2, 1]``).
* :class:`FrequencyPool2d`: FLC pooling (Grabinski et al., ECCV 2022): keep the central
  ``n/2`` frequencies of the 2-D DFT per axis and invert at half size. With
  ``window="hamming"`` the kept spectrum is tapered first (ASAP, Grabinski et al. 2023),
  which removes the sinc ringing of the hard cut-off.

``torch.fft`` has no ONNX export, so frequency pooling is applied as the exact linear
operator it is. Per axis of length ``n`` (``m = n/2``) with ``norm="forward"`` as in the
reference code, the kept frequencies are ``f_k = k - m//2`` (``k = 0..m-1``: the centred
set that ``fftshift`` lists, i.e. ``-m/2 .. m/2-1`` for even ``m``, Nyquist term
included exactly as the reference crop does)::

    A[j, x] = 1/n * sum_k w(f_k) * exp(2i*pi*f_k*j/m) * exp(-2i*pi*f_k*x/n)    # (m, n)
    out = Re(A_H X A_W^T) = Ar_H X Ar_W^T - Ai_H X Ai_W^T

The matrices are built in float64 at the first forward for a given size and kept as
non-persistent buffers (constants in an exported graph, absent from ``state_dict``). For
odd ``m`` the kept set is symmetric and ``Ai`` vanishes; for even ``m`` it has rank one
(the Nyquist term), applied as two matrix-vector products. Odd ``n`` is replicate-padded
by one row/column at the bottom/right first (so the output is ``ceil(n/2)``, the size
max-pool 3x3/s2/p1 gives).

Note for ``m % 2 == 1`` (``n = 2 mod 4``): the reference's ``int(n/4):int(3n/4)`` crop
followed by ``ifftshift`` puts a non-DC term at index 0; the centred set above is the
correct generalisation and equals the reference whenever ``n % 4 == 0``.

ASAP window: the reference multiplies the shifted full-size spectrum by
``sqrt(outer(hamming(n), hamming(n)))`` before cropping; here the same separable
``sqrt(hamming)`` window is used, but in its DC-centred (periodic) form
``h(f) = 0.54 + 0.46 cos(2 pi f / n)`` so that the DC gain is exactly 1 (the reference's
``np.hamming(n)`` peaks half a bin off DC).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - the torch idiom

Window = Literal["none", "hamming"]

_BINOMIAL = {
    2: [1.0, 1.0],
    3: [1.0, 2.0, 1.0],
    4: [1.0, 3.0, 3.0, 1.0],
    5: [1.0, 4.0, 6.0, 4.0, 1.0],
}


def binomial_filter(size: int) -> Tensor:
    """Normalised 2-D binomial filter, float32 ``[size, size]`` summing to 1."""
    if size not in _BINOMIAL:
        raise ValueError(f"blur filter size must be one of {sorted(_BINOMIAL)}, got {size}")
    a = torch.tensor(_BINOMIAL[size], dtype=torch.float64)
    f = torch.outer(a, a)
    return (f / f.sum()).to(torch.float32)


class BlurPool2d(nn.Module):
    """Blur with a binomial filter, then subsample by ``stride`` (depthwise, reflect pad).

    Input float ``[N, C, H, W]`` -> ``[N, C, ceil(H/stride), ceil(W/stride)]`` for the
    default padding. Reflect padding needs ``H, W > pad`` (2 for size 4): spatial size
    at least 3 at every pooling site, i.e. model inputs of at least 64 px.
    """

    filt: Tensor

    def __init__(self, channels: int, filter_size: int = 4, stride: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.filter_size = filter_size
        self.stride = stride
        # (left, right, top, bottom) as antialiased-cnns: even filters pad one more at the end.
        lo, hi = (filter_size - 1) // 2, filter_size // 2
        self.padding = (lo, hi, lo, hi)
        filt = binomial_filter(filter_size)[None, None].repeat(channels, 1, 1, 1)
        # Non-persistent: a fixed filter, not a weight; keeps state_dict keys identical to
        # the standard model so checkpoints and pretrained weights load across variants.
        self.register_buffer("filt", filt, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, self.padding, mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, filter_size={self.filter_size}, stride={self.stride}"


def axis_window(n: int, window: Window) -> npt.NDArray[np.float64]:
    """Per-axis spectral weights for signed frequencies ``f = -n/2 .. n/2-1`` (fftshift order)."""
    f = np.arange(n) - n // 2
    if window == "none":
        return np.ones(n)
    if window == "hamming":
        return np.sqrt(0.54 + 0.46 * np.cos(2.0 * np.pi * f / n))
    raise ValueError(f"window must be 'none' or 'hamming', got {window!r}")


def frequency_pool_matrix(n: int, window: Window = "none") -> npt.NDArray[np.complex128]:
    """Complex ``(n/2, n)`` operator of 1-D frequency pooling for an even length ``n``.

    ``A = IDFT_m . diag(w) . crop . DFT_n`` (``m = n/2``; DFT with ``norm="forward"``,
    i.e. ``1/n``, the inverse unscaled), so a constant signal stays constant.
    """
    if n < 2 or n % 2:
        raise ValueError(f"frequency pooling needs an even length >= 2, got {n}")
    m = n // 2
    freqs = np.arange(m) - m // 2  # the centred set kept from the n-point spectrum
    weights = axis_window(n, window)[freqs + n // 2]
    j = np.arange(m)[:, None, None]
    x = np.arange(n)[None, None, :]
    f = freqs[None, :, None]
    phase = np.exp(2j * np.pi * f * j / m) * np.exp(-2j * np.pi * f * x / n)
    return np.asarray((weights[None, :, None] * phase).sum(axis=1) / n, dtype=np.complex128)


def frequency_pool_fft(x: Tensor, window: Window = "none") -> Tensor:
    """Reference frequency pooling with ``torch.fft`` (eager only; not exportable).

    ``[N, C, H, W]`` with even ``H, W`` -> ``[N, C, H/2, W/2]``; the definition the
    matrix form in :class:`FrequencyPool2d` must reproduce.
    """
    h, w = x.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(x.to(torch.float64), norm="forward"), dim=(-2, -1))
    wh = torch.from_numpy(axis_window(h, window)).to(spec.device)
    ww = torch.from_numpy(axis_window(w, window)).to(spec.device)
    spec = spec * (wh[:, None] * ww[None, :])
    mh, mw = h // 2, w // 2
    top, left = h // 2 - mh // 2, w // 2 - mw // 2
    low = spec[..., top : top + mh, left : left + mw]
    out: Tensor = torch.fft.ifft2(torch.fft.ifftshift(low, dim=(-2, -1)), norm="forward").real
    return out.to(x.dtype)


class FrequencyPool2d(nn.Module):
    """FLC (``window="none"``) or ASAP (``window="hamming"``) pooling as matmuls.

    Input float ``[N, C, H, W]`` -> ``[N, C, ceil(H/2), ceil(W/2)]``. Operator matrices
    are created lazily per input size on the input's device and dtype (a model exported
    at a resolution must have run one forward at it first: :func:`training.export.export_onnx`
    does). Cost per channel is ``O(H W (H + W) / 2)`` multiply-adds (dense matrices).
    """

    def __init__(self, window: Window = "none") -> None:
        super().__init__()
        axis_window(2, window)  # validates
        self.window: Window = window

    def _operators(self, n: int, like: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(Ar [m, n], u [m], v [n])`` for length ``n``, with ``Ai = u v^T`` (or ``None``).

        ``Ai`` has rank one: symmetric frequency pairs ``+-f`` (equal weights) cancel in the
        imaginary part, leaving only the unpaired Nyquist term ``f = -m/2`` of even ``m``:
        ``Ai[j, x] = w/n * (-1)^j * sin(pi x / 2)``. So ``Ai X Ai^T`` costs two matrix-vector
        products instead of two matrix products (it would otherwise double the cost).
        """
        names = (f"op{n}_real", f"op{n}_imag_u", f"op{n}_imag_v")
        real = self._buffers.get(names[0])
        # Rebuilt only on a device change; a dtype change (autocast, .half()) is a cast at use.
        if real is None or real.device != like.device:
            a = frequency_pool_matrix(n, self.window)
            kwargs: dict[str, Any] = {"device": like.device, "dtype": like.dtype}
            u: Tensor | None = None
            v: Tensor | None = None
            if np.abs(a.imag).max() > 1e-12:  # even m: the Nyquist term
                left, sing, right = np.linalg.svd(a.imag)
                if sing[1] > 1e-9 * sing[0]:  # pragma: no cover - excluded by the algebra above
                    raise AssertionError("imaginary part of the pooling operator is not rank one")
                u = torch.tensor(left[:, 0] * sing[0], **kwargs)
                v = torch.tensor(right[0], **kwargs)
            self.register_buffer(names[0], torch.tensor(a.real, **kwargs), persistent=False)
            self.register_buffer(names[1], u, persistent=False)
            self.register_buffer(names[2], v, persistent=False)
        out = [self._buffers.get(name) for name in names]
        return tuple(None if t is None else t.to(like.dtype) for t in out)  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
            h, w = h + h % 2, w + w % 2
        rh, uh, vh = self._operators(h, x)
        rw, uw, vw = (rh, uh, vh) if w == h else self._operators(w, x)
        out = torch.matmul(torch.matmul(rh, x), rw.transpose(0, 1))
        if uh is not None and vh is not None and uw is not None and vw is not None:
            # Re(A X A^T) = Ar X Ar^T - Ai X Ai^T with Ai = u v^T per axis:
            # Ai_H X Ai_W^T = (v_H^T X v_W) * u_H u_W^T, a scalar per (image, channel).
            scalar = torch.matmul(torch.matmul(vh.unsqueeze(0), x), vw.unsqueeze(1))
            out = out - scalar * (uh.unsqueeze(1) * uw.unsqueeze(0))
        return out

    def extra_repr(self) -> str:
        return f"window={self.window!r}"
