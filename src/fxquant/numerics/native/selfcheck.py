"""One-time check, per process, that the compiled kernels reproduce the pure-torch formulas.

Runs every kernel variant (float32 / float64, divide / reciprocal, per tensor / per channel,
mask or not) on small tensors full of the cases where an implementation could differ: exact
rounding ties and their neighbours one ulp away, +-0, values that saturate, +-inf, NaN, huge and
tiny magnitudes.  The references below are written with torch ops only (the literal formulas),
so this module imports nothing else of fxquant.  Costs a few milliseconds.

Size (~600 lines): one reference check per kernel of ``kernels.cpp``, kept together because
they are one contract -- the whole library is used only if every check passes, in one call at
load -- and each reference must stay independent of the code it checks.
"""

from __future__ import annotations

import math

import torch

__all__ = ["run", "sum_lanes_match"]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns (so -0.0 != +0.0), NaN positions equal, NaN payloads ignored."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = torch.isnan(a), torch.isnan(b)
    if not torch.equal(na, nb):
        return False
    view = torch.int32 if a.dtype == torch.float32 else torch.int64
    return torch.equal(a.contiguous().view(view)[~na], b.contiguous().view(view)[~nb])


def _inputs(dtype: torch.dtype, scale: float, gen: torch.Generator) -> torch.Tensor:
    k = torch.arange(-300, 300, dtype=torch.float64)
    ties = torch.cat([(k + 0.5) * scale, k * scale, (k + 0.25) * scale]).to(dtype)
    up = torch.nextafter(ties, torch.full_like(ties, float("inf")))
    down = torch.nextafter(ties, torch.full_like(ties, -float("inf")))
    big = torch.finfo(dtype).max
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), big, -big,
                            1e-30, -1e-30, 1e30, -1e30], dtype=dtype)
    noise = torch.randn(997, generator=gen, dtype=torch.float64).to(dtype) * scale * 200
    return torch.cat([ties, up, down, special, noise])


def _reference_fq(x, s, zp, qmin, qmax, reciprocal):
    v = x * (1.0 / s) if reciprocal else x / s
    q = torch.round(v) + zp
    mask = (q >= qmin) & (q <= qmax)
    return (q.clamp(qmin, qmax) - zp) * s, mask


def _check_fake_quant(fq, masked_grad, gen) -> str | None:
    grids = [(-128, 127, 0), (0, 255, 128), (0, 255, 0), (-8, 7, 3), (-32768, 32767, -5)]
    for dtype in (torch.float32, torch.float64):
        for qmin, qmax, zp in grids:
            for reciprocal in (False, True):
                scale = 0.0123
                x = _inputs(dtype, scale, gen)
                s32 = torch.tensor(scale, dtype=torch.float32)
                zpt = torch.tensor(zp, dtype=torch.int32)
                s, z = s32.to(dtype), zpt.to(dtype)
                ref, ref_mask = _reference_fq(x, s, z, qmin, qmax, reciprocal)
                for with_mask in (True, False):
                    out, mask = fq(x, s32, zpt, qmin, qmax, 1, reciprocal, with_mask)
                    if not _same_bits(out, ref):
                        return f"fake_quant {dtype} [{qmin}, {qmax}] zp {zp} recip {reciprocal}"
                    if with_mask and not torch.equal(mask, ref_mask):
                        return f"fake_quant mask {dtype} [{qmin}, {qmax}] zp {zp}"
                g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
                g[::7] = -g[::7].abs()
                if not _same_bits(masked_grad(g, ref_mask), g * ref_mask.to(dtype)):
                    return f"masked_grad {dtype}"
        # per channel: channels in the middle (inner > 1) and last (inner == 1)
        c = 5
        scales = torch.tensor([0.01, 0.5, 3.0, 1e-3, 7.25], dtype=torch.float32)
        zps = torch.tensor([0, 3, -4, 100, -128], dtype=torch.int32)
        for layout in ("middle", "last"):
            base = torch.cat([_inputs(dtype, float(sc), gen)[:590] for sc in scales])
            if layout == "middle":
                x = base.reshape(c, 2, 295).transpose(0, 1).contiguous()  # [2, C, 295]
                s, z = scales.to(dtype)[None, :, None], zps.to(dtype)[None, :, None]
                axis, inner = 1, 295
            else:
                x = base.reshape(c, 590).t().contiguous()  # [590, C]
                s, z = scales.to(dtype), zps.to(dtype)
                axis, inner = 1, 1
            for reciprocal in (False, True):
                ref, ref_mask = _reference_fq(x, s, z, -128, 127, reciprocal)
                out, mask = fq(x, scales, zps, -128, 127, inner, reciprocal, True)
                if not (_same_bits(out, ref) and torch.equal(mask, ref_mask)):
                    return f"fake_quant per channel ({layout}, axis {axis}) {dtype}"
    return None


def _check_histogram(hist, gen) -> str | None:
    bins = 2048
    half = bins // 2
    for dtype in (torch.float32, torch.float64):
        for exp in (-100, -3, 0, 5, 120):
            bound = 2.0**exp
            x = (torch.rand(4099, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            x = torch.cat([x, torch.tensor([0.0, -0.0, -1e-300, 1e-300, -bound * 0.999])])
            x = x.clamp(-bound * (1 - 2**-40), bound * (1 - 2**-40)).to(dtype)
            if dtype == torch.float32:
                x = x[torch.isfinite(x) & (x.abs() < bound)]
            shift = (half.bit_length() - 1) - exp
            factor = torch.tensor(2.0**shift, dtype=torch.float64).to(dtype)
            scaled = torch.floor(x * factor)
            scaled = torch.where((scaled == 0) & (x < 0), -1.0, scaled)
            ref = torch.bincount(scaled.to(torch.int64) + half, minlength=bins)
            if not torch.equal(hist(x, shift, bins), ref):
                return f"histogram {dtype} exp {exp}"
    return None


def _check_histogram_observe(observe, gen) -> str | None:
    """histogram_observe against aminmax + the bincount above + torch.minimum / maximum; the
    cases it must decline (a value beyond the range, NaN, Inf, -0.0) leave everything as it was."""
    bins, exp = 256, 3
    half = bins // 2
    bound = 2.0**exp
    x = ((torch.rand(70001, generator=gen) * 2 - 1) * bound * 0.999).float()
    x[:6] = torch.tensor([0.0, -1e-30, 1e-30, -bound * 0.999, bound * 0.999, 0.5])
    for lo0, hi0 in ((-1.0, 1.0), (-100.0, 100.0), (-0.0, 0.0)):
        hist = torch.arange(bins, dtype=torch.int64)
        mn, mx = torch.tensor(lo0), torch.tensor(hi0)
        if observe(x, hist, torch.tensor(exp), mn, mx) != 0:
            return "histogram_observe declined a batch inside its range"
        scaled = torch.floor(x * 2.0 ** ((half.bit_length() - 1) - exp))
        scaled = torch.where((scaled == 0) & (x < 0), -1.0, scaled)
        ref = torch.arange(bins) + torch.bincount(scaled.to(torch.int64) + half, minlength=bins)
        lo, hi = torch.aminmax(x)
        if not (torch.equal(hist, ref) and _same_bits(mn, torch.minimum(torch.tensor(lo0), lo))
                and _same_bits(mx, torch.maximum(torch.tensor(hi0), hi))):
            return f"histogram_observe from [{lo0}, {hi0}]"
    for bad in (bound, -bound, float("nan"), float("inf"), -0.0):
        y = x.clone()
        y[40000] = bad
        hist, mn, mx = torch.zeros(bins, dtype=torch.int64), torch.tensor(1.0), torch.tensor(2.0)
        if (observe(y, hist, torch.tensor(exp), mn, mx) != 1 or hist.any() or float(mn) != 1.0
                or float(mx) != 2.0):
            return f"histogram_observe did not decline {bad}"
    return None


def _check_div_backward(divb, gen) -> str | None:
    for dtype in (torch.float32, torch.float64):
        g = torch.randn(3, 4, 5, 7, generator=gen, dtype=torch.float64).to(dtype)
        out = torch.randn(3, 4, 5, 7, generator=gen, dtype=torch.float64).to(dtype) * 1e3
        d = torch.tensor([0.37, -2.5, 1e-10, 3e7], dtype=dtype)
        gy, gd = divb(g, out, d, 35)
        dv = d.reshape(1, -1, 1, 1)
        if not (_same_bits(gy, g / dv) and _same_bits(gd, (out / dv) * g)):
            return f"div_channel_backward {dtype}"
    return None


SUM_SHAPES = ((3, 4, 5, 7), (2, 3, 1), (5, 2, 15), (4, 3, 16), (2, 5, 17), (3, 2, 8, 8),
              (2, 3, 63), (2, 2, 16, 16), (1, 3, 32, 32), (65, 2, 3, 3), (2, 2, 1000),
              (2, 2, 4097), (4, 2, 64, 64), (1, 2, 1 << 18))
"""[outer, C, inner...] shapes of the reduction check: rows shorter than a vector, exact
multiples of four vectors, tails of each kind, rows long enough for two and three cascade
levels, many outer rows per channel.  (One channel is never summed this way: at::sum of a
single output element takes another path, split across threads.)"""


def sum_lanes_match(div_backward_sum, lanes: int) -> bool:
    """Whether ``div_channel_backward_sum`` with ``lanes``-wide vectors gives ``torch.sum``'s
    bits (and ``grad / d``) on :data:`SUM_SHAPES`, with values of mixed magnitude and sign,
    where any other order of additions would round differently."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for shape in SUM_SHAPES:
            g = torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen).pow(8) * 1e3
            out = torch.randn(shape, generator=gen) * 10.0
            d = torch.rand(shape[1], generator=gen) + 0.25
            d[0] = -d[0]
            inner = math.prod(shape[2:])
            gy, gd = div_backward_sum(g, out, d, inner, lanes)
            dv = d.reshape((1, -1) + (1,) * (len(shape) - 2))
            dims = [0, *range(2, len(shape))]
            want = ((out / dv) * g).sum(dims)
            if not (_same_bits(gy, g / dv) and _same_bits(gd, want)):
                return False
    return True


def _check_autograd_ops(fq_ste, divide, divide_, gen) -> str | None:
    """The autograd operators: values and gradients against torch's own autograd."""
    for dtype in (torch.float32, torch.float64):
        x = _inputs(dtype, 0.05, gen)[:2000].reshape(4, 5, 100)
        s, z = torch.tensor(0.05), torch.tensor(3, dtype=torch.int32)
        ref, mask = _reference_fq(x, s.to(dtype), z.to(dtype), -128, 127, False)
        g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
        xa = x.clone().requires_grad_(True)
        with torch.enable_grad():
            out = fq_ste(xa, s, z, -128, 127, 1, False)
            out.backward(g)
        if not (_same_bits(out.detach(), ref) and _same_bits(xa.grad, g * mask.to(dtype))):
            return f"fake_quant_ste {dtype}"
        y = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64).to(dtype) * 10
        d = torch.tensor([0.3, -2.0, 1.7, 5e-3], dtype=dtype).reshape(1, -1, 1, 1)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype)
        want = []
        with torch.enable_grad():
            ya, da = y.clone().requires_grad_(True), d.clone().requires_grad_(True)
            o = torch.div(ya, da)
            o.backward(gy)
            want = [o.detach(), ya.grad, da.grad]
            for name, fn in (("channel_divide", divide), ("channel_divide_", divide_)):
                ya, da = y.clone().requires_grad_(True), d.clone().requires_grad_(True)
                o = fn(ya * 1.0, da)  # the in-place form writes over a non-leaf
                o.backward(gy)
                got = [o.detach(), ya.grad, da.grad]
                if not all(_same_bits(a, b) for a, b in zip(got, want, strict=True)):
                    return f"{name} {dtype}"
    return None


_ACTIVATIONS = (("relu6", (0.0, 6.0), True), ("relu", (0.0, math.inf), False))
"""(torch function name, clamp bounds, whether hardtanh's upper gate applies)"""


def _check_act_fake_quant(act_fq_ste, gen) -> str | None:
    """act_fake_quant_ste against torch's relu6 / relu followed by the literal fake quantization,
    values and gradients (the activation's own autograd backward of ``g * mask``)."""
    for name, bounds, gate_hi in _ACTIVATIONS:
        act = getattr(torch.nn.functional, name)
        for qmin, qmax, zp, scale in ((0, 255, 0, 6 / 255), (-128, 127, 0, 0.05),
                                      (0, 255, 3, 0.0123), (-8, 7, 0, 0.4)):
            x = _inputs(torch.float32, scale, gen)
            x = torch.cat([x, torch.tensor([6.0, 5.99999, 6.00001, 1e-45, -1e-45])])
            s, z = torch.tensor(scale), torch.tensor(zp, dtype=torch.int32)
            g = torch.randn(x.shape, generator=gen)
            g[::5] = -g[::5].abs()
            for reciprocal in (False, True):
                with torch.enable_grad():
                    xa = x.clone().requires_grad_(True)
                    ya = act(xa)
                    ref, mask = _reference_fq(ya.detach(), s, z.float(), qmin, qmax, reciprocal)
                    ya.backward(g * mask.float())
                    xb = x.clone().requires_grad_(True)
                    out = act_fq_ste(xb, s, z, qmin, qmax, bounds[0], bounds[1], gate_hi,
                                     reciprocal)
                    out.backward(g)
                if not (_same_bits(out.detach(), ref) and _same_bits(xb.grad, xa.grad)):
                    return f"act_fake_quant_ste {name} [{qmin}, {qmax}] recip {reciprocal}"
                plain = act_fq_ste(x, s, z, qmin, qmax, bounds[0], bounds[1], gate_hi,
                                   reciprocal)
                if not _same_bits(plain, ref):
                    return f"act_fake_quant_ste {name} without autograd"
    return None


def _clamped_batches(gen):
    """(activation name and function, bounds, averaging, step, x): several batches per
    observer, some long enough for several chunks, one with nothing clamped at the bottom."""
    for name, bounds, _ in _ACTIVATIONS:
        for averaging in (-1.0, 0.01):
            for step in range(5):
                x = torch.randn(70001 if step % 2 else 999, generator=gen) * (2 + 3 * step) - 1
                if step == 3:
                    x = x.abs() + 0.5
                yield name, getattr(torch.nn.functional, name), bounds, averaging, step, x


_OBSERVER_ARGS = (-128, 127, False, True, False, 2.0**-23)
"""qmin, qmax, symmetric, is_signed, power_of_two, eps of the checks below."""


def _check_clamped_observers(observe_clamped, act_observe, observe, gen) -> str | None:
    """observe_clamped(x) and act_observe(x) against observe_qparams(act(x)): statistics (and
    qparams), several steps of each observer from fresh statistics; act_observe's output against
    torch's activation.  A NaN or a -0.0 is declined with nothing touched (act_observe: in its
    output, which is still the activation's)."""
    state: dict = {}
    for name, act, bounds, averaging, step, x in _clamped_batches(gen):
        if step == 0:
            state = {k: (torch.tensor(float("inf")), torch.tensor(float("-inf")))
                     for k in ("clamped", "act", "ref")}
        (cm, cx), (am, ax), (rm, rx) = state["clamped"], state["act"], state["ref"]
        got = observe_clamped(x, cm, cx, *bounds, averaging, *_OBSERVER_ARGS, True)
        y, status = act_observe(x, am, ax, *bounds, averaging, *_OBSERVER_ARGS)
        want = observe(act(x), rm, rx, averaging, -1, *_OBSERVER_ARGS, 8, True)
        rs, rz = want[0], want[1]
        if got[2] != want[2] or not (_same_bits(cm, rm) and _same_bits(cx, rx)
                                     and _same_bits(got[0], rs) and torch.equal(got[1], rz)):
            return f"observe_clamped {name} averaging={averaging} step {step}"
        if status != 2 or not (_same_bits(y, act(x)) and _same_bits(am, rm)
                               and _same_bits(ax, rx)):
            return f"act_observe {name} averaging={averaging} step {step}"
        if step == 4:  # then the specials, declined
            special = _inputs(torch.float32, 0.05, gen)  # -0.0 and NaN among them
            if observe_clamped(special, cm, cx, *bounds, averaging, *_OBSERVER_ARGS, True)[2] != 1:
                return f"observe_clamped {name} did not decline NaN / -0.0"
            y, status = act_observe(special, am, ax, *bounds, averaging, *_OBSERVER_ARGS)
            if status != 1 or not _same_bits(y, act(special)):
                return f"act_observe {name} with NaN / -0.0"
            for t, r in zip((cm, cx, am, ax), (rm, rx, rm, rx), strict=True):
                if not _same_bits(t, r):
                    return f"{name}: a declined batch touched the statistics"
    return None


def _check_fold_scale(fold_scale, gen) -> str | None:
    """bn_fold_scale against the formula in torch autograd: values, min |sf|, and the gradients
    of the weight and gamma when sf also feeds a division of a conv output (two uses)."""
    for dtype in (torch.float32, torch.float64):
        for affine in (True, False):
            w = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64).to(dtype)
            var = (torch.rand(6, generator=gen, dtype=torch.float64) * 4).to(dtype)
            gamma = torch.randn(6, generator=gen, dtype=torch.float64).to(dtype)
            y = torch.randn(2, 6, 5, 5, generator=gen, dtype=torch.float64).to(dtype)
            g_w = torch.randn(w.shape, generator=gen, dtype=torch.float64).to(dtype)
            g_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype)
            results = []
            for fused in (True, False):
                wa, ya = w.clone().requires_grad_(True), y.clone().requires_grad_(True)
                ga = gamma.clone().requires_grad_(True) if affine else None
                with torch.enable_grad():
                    if fused:
                        ws, sf, low = fold_scale(wa, var, ga, 1e-5)
                    else:
                        std = torch.sqrt(var + 1e-5)
                        sf = std.reciprocal() if ga is None else ga / std
                        ws = wa * sf.reshape(-1, 1, 1, 1)
                        low = float(sf.detach().abs().amin())
                    out = ya / sf.reshape(1, -1, 1, 1)
                    torch.autograd.backward([ws, out], [g_w, g_y])
                results.append([ws.detach(), sf.detach(), torch.tensor(low), wa.grad, ya.grad]
                               + ([ga.grad] if affine else []))
            if not all(_same_bits(a, b) for a, b in zip(*results, strict=True)):
                return f"bn_fold_scale {dtype} affine={affine}"
    return None


def _reference_qparams(lo, hi, qmin, qmax, symmetric):
    """The float64 arithmetic of ``choose_qparams`` (signed grids) on one range."""
    lo64, hi64 = lo.double().clamp(max=0.0), hi.double().clamp(min=0.0)
    if symmetric:
        scale, zp = torch.maximum(-lo64, hi64) / qmax, torch.zeros_like(lo64)
        scale = scale.clamp(min=2.0**-23)
    else:
        scale = ((hi64 - lo64) / (qmax - qmin)).clamp(min=2.0**-23)
        zp = (qmin - torch.round(lo64 / scale)).clamp(qmin, qmax)
    return scale.float().clamp(min=2.0**-23), zp.int()


def _check_observe(observe, gen) -> str | None:
    """Running and moving-average statistics and the qparams of the new range."""
    for averaging in (-1.0, 0.01):
        for symmetric in (True, False):
            mn, mx = torch.tensor(float("inf")), torch.tensor(float("-inf"))
            ref_mn, ref_mx = mn.clone(), mx.clone()
            for step in range(4):
                x = torch.randn(500 if step < 2 else 70001, generator=gen) * (step + 1) + 0.3
                if step == 2:  # several chunks, a zero minimum of +0.0 only
                    x = x.clamp(min=0.0)
                if step == 3:  # a -0.0 among them: aminmax's own order decides
                    x = x.clamp(max=0.0)
                    x[12345] = -0.0
                s, z, status = observe(x, mn, mx, averaging, -1, -128, 127, symmetric, True,
                                       False, 2.0**-23, 8, True)
                lo, hi = torch.aminmax(x)
                if averaging < 0:
                    ref_mn, ref_mx = torch.minimum(ref_mn, lo), torch.maximum(ref_mx, hi)
                elif step == 0:
                    ref_mn, ref_mx = lo.clone(), hi.clone()
                else:
                    ref_mn.add_(lo - ref_mn, alpha=averaging)
                    ref_mx.add_(hi - ref_mx, alpha=averaging)
                rs, rz = _reference_qparams(ref_mn, ref_mx, -128, 127, symmetric)
                if status != 0 or not (_same_bits(mn, ref_mn) and _same_bits(mx, ref_mx)
                                       and _same_bits(s, rs) and torch.equal(z, rz)):
                    return f"observe_qparams averaging={averaging} symmetric={symmetric}"
    return _check_moving_average(observe, gen) or _check_observe_channels(observe, gen)


def _check_moving_average(observe, gen) -> str | None:
    """Many moving-average steps on small batches: torch's ``add_(t, alpha=a)`` of 0-dim
    tensors rounds once (a fused multiply-add); a separate multiply and add differs on about
    one step in seventy, which the few steps above could miss."""
    mn, mx = torch.tensor(float("inf")), torch.tensor(float("-inf"))
    ref_mn, ref_mx = mn.clone(), mx.clone()
    for step in range(400):
        x = torch.randn(7, generator=gen) * (1 + step % 5) + (step % 3)
        observe(x, mn, mx, 0.01, -1, -128, 127, True, True, False, 2.0**-23, 8, False)
        lo, hi = torch.aminmax(x)
        if step == 0:
            ref_mn, ref_mx = lo.clone(), hi.clone()
        else:
            ref_mn.add_(lo - ref_mn, alpha=0.01)
            ref_mx.add_(hi - ref_mx, alpha=0.01)
        if not (_same_bits(mn, ref_mn) and _same_bits(mx, ref_mx)):
            return f"observe_qparams moving average, step {step}"
    return None


def _check_observe_channels(observe, gen) -> str | None:
    """Running per-channel statistics of a weight ([C, K] rows, axis 0) and its symmetric
    scales, against amin / amax / minimum / maximum and the float32 scale formula; rows whose
    extremes are zero (either sign), hold NaN / Inf, or are all one value."""
    c, k = 37, 29
    mn, mx = torch.full((c,), float("inf")), torch.full((c,), float("-inf"))
    ref_mn, ref_mx = mn.clone(), mx.clone()
    for step in range(4):
        w = torch.randn(c, k, generator=gen) * (step + 1)
        w[3] = 1.5  # one value
        w[5, :4] = torch.tensor([0.0, -0.0, -1e-30, 1e-30]) if step == 2 else w[5, :4]
        if step == 1:  # a zero minimum: the ATen path's own order decides its sign
            w[7] = w[7].abs()
            w[7, 2] = 0.0
        if step == 3:
            w[8] = -w[8].abs()
            w[8, 1] = -0.0
        if step == 0:  # the first batch: the caller's path (min_val not [C] yet)
            mn, mx = w.amin(1), w.amax(1)
            ref_mn, ref_mx = mn.clone(), mx.clone()
            continue
        lo, hi = torch.aminmax(w, dim=1)
        ref_mn, ref_mx = torch.minimum(ref_mn, lo), torch.maximum(ref_mx, hi)
        s, z, status = observe(w, mn, mx, -1.0, 0, -128, 127, True, True, False, 2.0**-23, 8,
                               True)
        rs = torch.maximum(ref_mn.neg(), ref_mx).clamp_min_(0.0).div_(127).clamp_min_(2.0**-23)
        if status != 0 or not (_same_bits(mn, ref_mn) and _same_bits(mx, ref_mx)
                               and _same_bits(s, rs) and not z.any()):
            return f"observe_qparams per channel, step {step}"
    for bad in (float("nan"), float("inf")):
        w = torch.randn(c, k, generator=gen)
        w[11, 13] = bad
        before = mn.clone()
        if observe(w, mn, mx, -1.0, 0, -128, 127, True, True, False, 2.0**-23, 8, True)[2] != 1 \
                or not _same_bits(mn, before):
            return f"observe_qparams per channel did not decline {bad}"
    return None


_ROUNDER = 1.5 * 2.0**23


def _check_runtime_ops(scale_round, grid_lookup, gen) -> str | None:
    """scale_round against the torch operations it fuses; grid_lookup against a gather."""
    x = _inputs(torch.float32, 0.37, gen)
    x = torch.cat([x, x * 2.0**20, torch.arange(-70000, 70000, 0.5)])
    for mult in (torch.tensor([0.0123]), torch.tensor([1 / 3, 2.5, 7e-5, 1.0])):
        xs = x[: x.numel() // 4 * 4]
        for inner in (1, 3) if mult.numel() > 1 else (1,):
            xv = xs[: xs.numel() // (4 * inner) * (4 * inner)]
            shaped = xv.reshape(-1, mult.numel(), inner)
            for add, post in ((None, None), (3.0, None), (None, 0.02), (-128.0, 0.5)):
                ref = (shaped * mult.reshape(-1, 1)).add_(_ROUNDER).sub_(_ROUNDER)
                clamped = post is not None
                if clamped:
                    ref.clamp_(-128.0, 127.0)
                if add is not None:
                    ref.add_(add)
                if post is not None:
                    ref.mul_(post)
                out = torch.empty_like(shaped)
                scale_round(shaped.contiguous(), out, mult, inner, 0.0 if add is None else add,
                            add is not None, 1.0 if post is None else post, post is not None,
                            -128.0, 127.0, clamped)
                if not _same_bits(out, ref):
                    return f"scale_round C={mult.numel()} inner={inner} add={add} post={post}"
    s = torch.tensor(0.05)
    inv = 1.0 / s
    grid = torch.arange(-128, 128, dtype=torch.float32).sub_(3).mul_(s)
    table = torch.sigmoid(grid)
    codes = torch.randint(-128, 128, (5000,), generator=gen)
    xg = grid[codes + 128]
    out, ok = grid_lookup(xg, s, inv, 3, -128, 127, table)
    if not (ok and _same_bits(out, table[codes + 128])):
        return "grid_lookup on the grid"
    for bad in (xg[17] + 1e-3, float("nan")):
        xb = xg.clone()
        xb[17] = bad
        if grid_lookup(xb, s, inv, 3, -128, 127, table)[1]:
            return f"grid_lookup accepted {bad} off the grid"
    return None


def _fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fma: the product of two float32 values is exact in float64 (the sum's double
    rounding cannot matter at these magnitudes)."""
    return (a.double() * b.double() + c.double()).float()


def _check_qlinear_add(qadd, gen) -> str | None:
    """QLinearAdd against the same arithmetic written with torch ops (fma through float64)."""
    for sa, za, sb, zb, sc, zc in ((0.02, 128, 0.031, 120, 0.045, 125), (0.5, 0, 0.25, 0, 0.7, 0),
                                   (0.013, 3, 0.013, 3, 0.013, 3)):
        qa = torch.randint(0, 256, (40_001,), generator=gen).float()
        qb = torch.randint(0, 256, (40_001,), generator=gen).float()
        s32 = torch.tensor([sa, sb, sc])
        a, b = (qa - za) * s32[0], (qb - zb) * s32[1]
        ra, rb = s32[0] / s32[2], s32[1] / s32[2]
        fixed = torch.tensor(float(zc)) - _fma32(ra, torch.tensor(float(za)),
                                                 rb * torch.tensor(float(zb)))
        inv_a, inv_b = 1.0 / s32[0], 1.0 / s32[1]
        ca = (a * inv_a).add_(_ROUNDER).sub_(_ROUNDER).add_(za)
        cb = (b * inv_b).add_(_ROUNDER).sub_(_ROUNDER).add_(zb)
        v = _fma32(ca, ra.expand_as(ca), _fma32(cb, rb.expand_as(cb), fixed.expand_as(cb)))
        ref = v.add_(_ROUNDER).sub_(_ROUNDER).clamp_(0, 255).sub_(zc).mul_(s32[2])
        params = torch.stack([inv_a, torch.tensor(float(za)), inv_b, torch.tensor(float(zb)),
                              ra, rb, fixed, torch.tensor(0.0), torch.tensor(255.0),
                              torch.tensor(float(zc)), s32[2]])
        if not _same_bits(qadd(a, b, params), ref):
            return f"qlinear_add scales {sa}, {sb} -> {sc}"
    return None


_RATIONAL = ((4e-11, 1e-07, 6e-05, 8e-03, 0.25), (6e-13, 6e-09, 6e-06, 1.7e-03, 0.12, 1.0))
"""Coefficients of the same shape as MLAS's (any exercise the arithmetic; the runtime's own are
in :mod:`fxquant.runtime_math.ort`)."""


def _check_logistic(logistic, gen) -> str | None:
    """The MLAS logistic against the same steps written with torch ops (fma through float64)."""
    x = torch.cat([torch.randn(200_001, generator=gen) * 8, torch.linspace(-20.0, 20.0, 4001),
                   torch.tensor([0.0, -0.0, 18.0, -18.0, float("inf"), -float("inf")])])
    alpha = [torch.tensor(c, dtype=torch.float32) for c in _RATIONAL[0]]
    beta = [torch.tensor(c, dtype=torch.float32) for c in _RATIONAL[1]]
    t = x.clamp(-18.0, 18.0)
    t2 = t * t
    p = _fma32(t2, alpha[0].expand_as(t2), alpha[1].expand_as(t2))
    for c in alpha[2:]:
        p = _fma32(p, t2, c.expand_as(t2))
    p = p * t
    q = _fma32(t2, beta[0].expand_as(t2), beta[1].expand_as(t2))
    for c in beta[2:]:
        q = _fma32(q, t2, c.expand_as(t2))
    ref = (p / q + 0.5).clamp_(0.0, 1.0)
    coeffs = torch.stack([*alpha, *beta])
    if not _same_bits(logistic(x, coeffs, False), ref):
        return "mlas_logistic"
    if not _same_bits(logistic(x, coeffs, True), x * ref):
        return "mlas_logistic times x"
    return None


def _layer_norm_row(row: list[float], w: list[float], b: list[float], eps: float) -> list[float]:
    """ORT's LayerNormalization of one row, element by element (Python floats are float64;
    ``f32`` rounds to float32; a float32 fma is the float64 sum of the exact product)."""
    def f32(v: float) -> float:
        return float(torch.tensor(v, dtype=torch.float32))

    n = len(row)
    t = [sum(row[i::4]) for i in range(4)]  # the kernel's four float64 chains
    mean = f32(((t[0] + t[1]) + (t[2] + t[3])) / n)
    acc = [0.0] * 8
    for h in range(n):
        d = f32(row[h] - mean)
        acc[h % 8] = f32(d * d + acc[h % 8])
    a = [f32(acc[i] + acc[i + 4]) for i in range(4)]
    v = f32(f32(a[0] + a[2]) + f32(a[1] + a[3]))
    inv = f32(1.0 / f32(math.sqrt(f32(f32(v / n) + f32(eps)))))
    return [f32(f32(f32(x - mean) * inv) * w[h] + b[h]) for h, x in enumerate(row)]


def _check_layer_norm(layer_norm, gen) -> str | None:
    """ort_layer_norm against ORT's steps computed one element at a time."""
    for rows, n in ((3, 8), (2, 48)):
        x = torch.randn(rows, n, generator=gen) * 3 + 0.5
        w, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
        ref = torch.tensor([_layer_norm_row(r, w.tolist(), b.tolist(), 1e-5) for r in x.tolist()])
        if not _same_bits(layer_norm(x, w, b, 1e-5), ref):
            return f"ort_layer_norm on {rows}x{n}"
    return None


def _check_same_bytes(same, gen) -> str | None:
    """same_bytes against torch.equal on tensors that differ in one element, dtype or shape."""
    w = torch.randn(37, 5, generator=gen)
    other = w.clone()
    other[17, 3] += 1.0
    cases = (([w, w[0]], [w.clone(), w[0].clone()], 1), ([w], [other], 0),
             ([w], [w.double()], 0), ([w], [w.reshape(5, 37)], 0),
             ([torch.tensor(0.5), None], [torch.tensor(0.5), None], 1), ([None], [w], 0),
             ([], [], 1), ([w, w.t()], [w, w.t()], -1))
    for a, b, want in cases:
        if same(a, b) != want:
            return f"same_bytes on {[None if t is None else tuple(t.shape) for t in a]}: " \
                   f"expected {want}"
    return None


def run(ops) -> str | None:
    """None if every kernel matches its reference, else what differed."""
    (fq, masked_grad, hist, divb, fq_ste, divide, observe, scale_round, lookup, qadd, same,
     logistic, hist_observe, divide_, layer_norm, observe_clamped, act_fq_ste, fold_scale,
     act_observe) = ops
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        problem = (_check_fake_quant(fq, masked_grad, gen) or _check_histogram(hist, gen)
                   or _check_div_backward(divb, gen))
        problem = problem or _check_observe(observe, gen)
        problem = problem or _check_runtime_ops(scale_round, lookup, gen)
        problem = problem or _check_qlinear_add(qadd, gen) or _check_same_bytes(same, gen)
        problem = problem or _check_layer_norm(layer_norm, gen)
        problem = problem or _check_logistic(logistic, gen)
        problem = problem or _check_histogram_observe(hist_observe, gen)
        problem = problem or _check_clamped_observers(observe_clamped, act_observe, observe, gen)
    return (problem or _check_autograd_ops(fq_ste, divide, divide_, gen)
            or _check_act_fake_quant(act_fq_ste, gen) or _check_fold_scale(fold_scale, gen))
