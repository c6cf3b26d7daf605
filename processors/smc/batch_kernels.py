"""numba kernels of the batch form: the sequential part of `DetectorCore.step` over whole arrays.

`run_detectors` is an operation-by-operation port of the incremental state machines (indicators.py:
AtrState/RsiState; core.py: DetectorCore.step with FvgBook, ObBook, Structure + ObTracker, SwingRun,
LevelBook, derive_setup). Float operations are done in the same order with the same operands, so the
results are bit-identical (tests/smc/test_forms_agree.py compares every bar of 140 symbols + BTC 1m
against the incremental engine; events as exact JSON).

Books keep the Python lists' order (oldest first) in arrays with compaction on removal and a left
shift when the cap is exceeded. Events are written directly as sorted-key JSON bytes (the layout of
`orjson.dumps(ev, option=OPT_SORT_KEYS)`), one line per bar, except that every float is written as a
NUL placeholder and appended to a float array: `events_json` formats those floats with orjson itself
(so the float text is orjson's, e.g. `1e-7`, `1e+16`) and splices them in.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from numba import njit

_NJ: dict[str, Any] = dict(cache=True, nogil=True, error_model="numpy")


def _b(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8).copy()


# JSON fragments (keys sorted as orjson OPT_SORT_KEYS orders them)
K_BOS = _b('"bos":{"dir":')
K_CHOCH = _b('"choch":{"dir":')
K_LEVEL = _b(',"level":')
K_PIVOT = _b(',"pivot":')
K_FVG = _b('"fvg":{"bottom":')
K_DIR = _b(',"dir":')
K_TOP = _b(',"top":')
K_FVGM = _b('"fvg_mitigated":[')
K_BOTTOM0 = _b('{"bottom":')
K_CREATED = _b(',"created":')
K_OB = _b('"ob":{"bottom":')
K_INDEX = _b(',"index":')
K_STRENGTH = _b(',"strength":')
K_TIME = _b(',"time":')
K_VSHARE = _b(',"volume_share":')
K_OBM = _b('"ob_mitigated":[')
K_SWEEP = _b('"sweep":[')
K_COUNT0 = _b('{"count":')
K_SIDE_HIGH = _b(',"side":"high"}')
K_SIDE_LOW = _b(',"side":"low"}')
K_SWH = _b('"swing_high":{"level":')
K_SWL = _b('"swing_low":{"level":')
K_SUPERSEDES = _b(',"supersedes":')
K_NULL = _b('null')

_NUL = 0       # float placeholder
_COMMA = 44
_LBRACE = 123
_RBRACE = 125
_RBRACKET = 93
_NL = 10


@njit(**_NJ)
def _wl(buf, pos, lit):
    m = lit.shape[0]
    buf[pos:pos + m] = lit
    return pos + m


@njit(**_NJ)
def _wi(buf, pos, x):
    if x < 0:
        buf[pos] = 45
        pos += 1
        x = -x
    if x == 0:
        buf[pos] = 48
        return pos + 1
    m = 0
    y = x
    while y > 0:
        m += 1
        y //= 10
    p = pos + m - 1
    while x > 0:
        buf[p] = 48 + x % 10
        x //= 10
        p -= 1
    return pos + m


@njit(**_NJ)
def _wf(buf, pos, fl, k, x):
    buf[pos] = _NUL
    fl[k] = x
    return pos + 1, k + 1


@njit(**_NJ)
def _grow_u8(a, need):
    m = a.shape[0]
    while m < need:
        m *= 2
    b = np.empty(m, dtype=np.uint8)
    b[:a.shape[0]] = a
    return b


@njit(**_NJ)
def _grow_f8(a, need):
    m = a.shape[0]
    while m < need:
        m *= 2
    b = np.empty(m, dtype=np.float64)
    b[:a.shape[0]] = a
    return b


@njit(**_NJ)
def tanh_libm(x):
    """math.tanh element by element: the C library's tanh, as features_scalar calls it (np.tanh uses
    numpy's own SIMD routine, which differs in the last bit on ~30 % of real inputs)."""
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = math.tanh(x[i])
    return out


@njit(**_NJ)
def trailing_means(v, w):
    """For each i: the mean of v[max(0, i-w+1)..i] summed left to right from 0.0, then divided by the
    count -- features.trailing_mean's arithmetic over every window (no sliding sum: its rounding differs)."""
    n = v.shape[0]
    out = np.empty(n)
    for i in range(n):
        s = i - w + 1
        if s < 0:
            s = 0
        acc = 0.0
        for j in range(s, i + 1):
            acc += v[j]
        out[i] = acc / (i + 1 - s)
    return out


@njit(**_NJ)
def segment_sums(v, starts, ends):
    """Sequential (left-to-right) float sums of v[s..e] for each segment, as the Python loop."""
    out = np.empty(starts.shape[0])
    for k in range(starts.shape[0]):
        s = starts[k]
        acc = v[s]
        for j in range(s + 1, ends[k] + 1):
            acc += v[j]
        out[k] = acc
    return out


@njit(**_NJ)
def run_detectors(T, O, H, L, C, V, fd, ft, fb, sw, swing_n, atr_p, rsi_p, max_fvgs, max_obs, max_levels,
                  cluster_atr, require_down, rr, min_stop_atr):
    n = T.shape[0]
    nan = np.nan
    atr_out = np.full(n, nan)
    atr_eff = np.empty(n)
    rsi_out = np.full(n, nan)
    s_trend = np.empty(n)
    s_onear = np.empty(n)
    s_sdir = np.empty(n)
    s_sage = np.empty(n)
    s_fsize = np.empty(n)
    s_fdist = np.empty(n)
    s_odist = np.empty(n)
    s_ldist = np.empty(n)
    set_side = np.zeros(n, dtype=np.int8)
    set_entry = np.zeros(n)
    set_stop = np.zeros(n)
    set_target = np.zeros(n)
    buf = np.empty(64 * n + 4096, dtype=np.uint8)
    fl = np.empty(2 * n + 64)       # typical: < 2 floats and ~55 bytes per bar; both grow on demand
    pos = 0
    k = 0

    # ---- indicator state
    a_n = 0
    a_prev = 0.0
    a_sum = 0.0
    a_ready = False
    a_val = 0.0
    r_n = 0
    r_prev = 0.0
    r_gain = 0.0
    r_loss = 0.0

    # ---- books (capacity: never more than one entry per bar, plus the transient overflow)
    capf = min(max_fvgs, n) + 1
    fD = np.zeros(capf, dtype=np.int64)
    fT = np.zeros(capf)
    fB = np.zeros(capf)
    fC = np.zeros(capf, dtype=np.int64)
    nf = 0
    mfD = np.zeros(capf, dtype=np.int64)
    mfT = np.zeros(capf)
    mfB = np.zeros(capf)
    mfC = np.zeros(capf, dtype=np.int64)
    capo = min(max_obs, n) + 1
    oD = np.zeros(capo, dtype=np.int64)
    oT = np.zeros(capo)
    oB = np.zeros(capo)
    oI = np.zeros(capo, dtype=np.int64)
    no = 0
    moD = np.zeros(capo, dtype=np.int64)
    moT = np.zeros(capo)
    moB = np.zeros(capo)
    moI = np.zeros(capo, dtype=np.int64)
    capl = min(max_levels, n) + 1
    hL = np.zeros(capl)
    hN = np.zeros(capl, dtype=np.int64)
    hP = np.zeros(capl, dtype=np.int64)
    nh = 0
    lL = np.zeros(capl)
    lN = np.zeros(capl, dtype=np.int64)
    lP = np.zeros(capl, dtype=np.int64)
    nl = 0

    # ---- structure: swing levels and their OB trackers (candle = bar index, -1 = none)
    trend = 0
    hi_set = False
    hi_piv = 0
    hi_lvl = 0.0
    hi_brk = False
    hi_trk = False
    hi_bd = -1
    hi_ba = -1
    hi_vs = 0.0
    lo_set = False
    lo_piv = 0
    lo_lvl = 0.0
    lo_brk = False
    lo_trk = False
    lo_bd = -1
    lo_ba = -1
    lo_vs = 0.0
    # swing run
    run_side = 0
    run_level = 0.0
    run_pivot = -1
    sweep_dir = 0
    sweep_t = -1

    for t in range(n):
        h = H[t]
        l = L[t]
        c = C[t]
        # ---------------- ATR (AtrState.update)
        if a_n == 0:
            tr = h - l
            a_sum = 0.0
            a_n = 1
            a_prev = c
            atr = tr
        else:
            pc = a_prev
            tr = h - l
            v2 = abs(pc - h)
            if v2 > tr:
                tr = v2
            v3 = abs(pc - l)
            if v3 > tr:
                tr = v3
            a_prev = c
            nn = a_n
            a_n = nn + 1
            if not a_ready:
                a_sum += tr
                if nn == atr_p:
                    a_val = a_sum / atr_p
                    a_ready = True
                    atr_out[t] = a_val
                    atr = a_val
                else:
                    atr = a_sum / nn
            else:
                a_val = a_val * (atr_p - 1)
                a_val += tr
                a_val /= atr_p
                atr_out[t] = a_val
                atr = a_val
        atr_eff[t] = atr
        # ---------------- RSI (RsiState.update)
        rn = r_n
        r_n = rn + 1
        if rn == 0:
            r_prev = c
        else:
            d = c - r_prev
            r_prev = c
            if rn < rsi_p:
                if d < 0:
                    r_loss -= d
                else:
                    r_gain += d
            else:
                if rn == rsi_p:
                    if d < 0:
                        r_loss -= d
                    else:
                        r_gain += d
                    r_loss /= rsi_p
                    r_gain /= rsi_p
                else:
                    r_loss *= (rsi_p - 1)
                    r_gain *= (rsi_p - 1)
                    if d < 0:
                        r_loss -= d
                    else:
                        r_gain += d
                    r_loss /= rsi_p
                    r_gain /= rsi_p
                s = r_gain + r_loss
                rsi_out[t] = 100.0 * (r_gain / s) if s != 0.0 else 0.0

        # room for this bar's JSON (worst case: every open zone mitigated)
        need = pos + 1024 + 160 * (nf + no + 4)
        if need > buf.shape[0]:
            buf = _grow_u8(buf, need)
        needf = k + 32 + 2 * (nf + no)
        if needf > fl.shape[0]:
            fl = _grow_f8(fl, needf)

        # ---------------- 1. mitigation
        nmf = 0
        w = 0
        for i in range(nf):
            hit = (l <= fT[i]) if fD[i] == 1 else (h >= fB[i])
            if hit:
                mfD[nmf] = fD[i]
                mfT[nmf] = fT[i]
                mfB[nmf] = fB[i]
                mfC[nmf] = fC[i]
                nmf += 1
            else:
                fD[w] = fD[i]
                fT[w] = fT[i]
                fB[w] = fB[i]
                fC[w] = fC[i]
                w += 1
        nf = w
        nmo = 0
        w = 0
        for i in range(no):
            hit = (l < oB[i]) if oD[i] == 1 else (h > oT[i])
            if hit:
                moD[nmo] = oD[i]
                moT[nmo] = oT[i]
                moB[nmo] = oB[i]
                moI[nmo] = oI[i]
                nmo += 1
            else:
                oD[w] = oD[i]
                oT[w] = oT[i]
                oB[w] = oB[i]
                oI[w] = oI[i]
                w += 1
        no = w

        # ---------------- 2. structure break + order block
        brk_kind = 0        # 1 bos, 2 choch
        brk_dir = 0
        brk_lvl = 0.0
        brk_piv = 0
        ob_has = False
        ob_top = 0.0
        ob_bot = 0.0
        ob_idx = 0
        ob_str = 0.0
        ob_shr = 0.0
        bull = False
        bear = False
        trk_has = False
        trk_cand = -1
        trk_vs = 0.0
        if hi_set and not hi_brk and c > hi_lvl:
            hi_brk = True
            brk_kind = 2 if trend == -1 else 1
            trend = 1
            brk_dir = 1
            brk_lvl = hi_lvl
            brk_piv = hi_piv
            if hi_trk:
                trk_has = True
                trk_cand = hi_bd if (require_down and hi_bd >= 0) else hi_ba
                trk_vs = hi_vs
            hi_trk = False
        elif lo_set and not lo_brk and c < lo_lvl:
            lo_brk = True
            brk_kind = 2 if trend == 1 else 1
            trend = -1
            brk_dir = -1
            brk_lvl = lo_lvl
            brk_piv = lo_piv
            if lo_trk:
                trk_has = True
                trk_cand = lo_bd if (require_down and lo_bd >= 0) else lo_ba
                trk_vs = lo_vs
            lo_trk = False
        if brk_kind != 0:
            if brk_dir == 1:
                bull = True
            else:
                bear = True
            if trk_has and trk_cand >= 0:
                j = trk_cand
                ob_top = H[j]
                ob_bot = L[j]
                a = atr if atr > 1e-12 else 1e-12
                ob_str = abs(C[j] - O[j]) / a
                ob_shr = V[j] / trk_vs if trk_vs > 0.0 else 0.0
                ob_idx = j
                ob_has = True
                oD[no] = brk_dir
                oT[no] = ob_top
                oB[no] = ob_bot
                oI[no] = j
                no += 1
                if no > max_obs:
                    for i in range(no - 1):
                        oD[i] = oD[i + 1]
                        oT[i] = oT[i + 1]
                        oB[i] = oB[i + 1]
                        oI[i] = oI[i + 1]
                    no -= 1

        # ---------------- 3. sweeps
        sh_has = False
        sh_lvl = 0.0
        sh_cnt = 0
        sh_piv = 0
        sl_has = False
        sl_lvl = 0.0
        sl_cnt = 0
        sl_piv = 0
        if nh > 0:
            w = 0
            for i in range(nh):
                x = hL[i]
                if h > x:
                    if c <= x:
                        if not sh_has or x > sh_lvl:     # max(): first maximum
                            sh_lvl = x
                            sh_piv = hP[i]
                        sh_has = True
                        sh_cnt += hN[i]
                else:
                    hL[w] = hL[i]
                    hN[w] = hN[i]
                    hP[w] = hP[i]
                    w += 1
            nh = w
        if nl > 0:
            w = 0
            for i in range(nl):
                x = lL[i]
                if l < x:
                    if c >= x:
                        if not sl_has or x < sl_lvl:     # min(): first minimum
                            sl_lvl = x
                            sl_piv = lP[i]
                        sl_has = True
                        sl_cnt += lN[i]
                else:
                    lL[w] = lL[i]
                    lN[w] = lN[i]
                    lP[w] = lP[i]
                    w += 1
            nl = w
        if sh_has or sl_has:
            net = 0
            if sh_has:
                net -= 1
                bear = True
            if sl_has:
                net += 1
                bull = True
            sweep_dir = 1 if net > 0 else (-1 if net < 0 else 0)
            sweep_t = t

        # ---------------- 4. trackers absorb bar t, new FVG
        if hi_trk:
            if C[t] < O[t] and (hi_bd < 0 or l <= L[hi_bd]):
                hi_bd = t
            if hi_ba < 0 or l <= L[hi_ba]:
                hi_ba = t
            hi_vs += V[t]
        if lo_trk:
            if C[t] > O[t] and (lo_bd < 0 or h >= H[lo_bd]):
                lo_bd = t
            if lo_ba < 0 or h >= H[lo_ba]:
                lo_ba = t
            lo_vs += V[t]
        fdir = fd[t]
        if fdir != 0:
            fD[nf] = fdir
            fT[nf] = ft[t]
            fB[nf] = fb[t]
            fC[nf] = t
            nf += 1
            if nf > max_fvgs:
                for i in range(nf - 1):
                    fD[i] = fD[i + 1]
                    fT[i] = fT[i + 1]
                    fB[i] = fB[i + 1]
                    fC[i] = fC[i + 1]
                nf -= 1

        # ---------------- 5. swings
        sw_ev = 0
        sw_piv = 0
        sw_lvl = 0.0
        sw_sup = -1
        side = sw[t]
        if side != 0:
            p = t - swing_n
            level = H[p] if side == 1 else L[p]
            emit = False
            old = -1
            if side == run_side:
                if (level > run_level) if side == 1 else (level < run_level):
                    old = run_pivot
                    run_level = level
                    run_pivot = p
                    emit = True
            else:
                run_side = side
                run_level = level
                run_pivot = p
                emit = True
            if emit:
                sw_ev = side
                sw_piv = p
                sw_lvl = level
                sw_sup = old
                # Structure.set_swing: new unbroken level, tracker seeded with bars p+1..t
                bd = -1
                ba = -1
                vs = 0.0
                for j in range(p + 1, t + 1):
                    if side == 1:
                        lj = L[j]
                        if C[j] < O[j] and (bd < 0 or lj <= L[bd]):
                            bd = j
                        if ba < 0 or lj <= L[ba]:
                            ba = j
                    else:
                        hj = H[j]
                        if C[j] > O[j] and (bd < 0 or hj >= H[bd]):
                            bd = j
                        if ba < 0 or hj >= H[ba]:
                            ba = j
                    vs += V[j]
                if side == 1:
                    hi_set = True
                    hi_piv = p
                    hi_lvl = level
                    hi_brk = False
                    hi_trk = True
                    hi_bd = bd
                    hi_ba = ba
                    hi_vs = vs
                else:
                    lo_set = True
                    lo_piv = p
                    lo_lvl = level
                    lo_brk = False
                    lo_trk = True
                    lo_bd = bd
                    lo_ba = ba
                    lo_vs = vs
                # LevelBook.add
                tol = cluster_atr * atr
                if side == 1:
                    merged = False
                    for i in range(nh):
                        if abs(hL[i] - level) <= tol:
                            hN[i] += 1
                            if level > hL[i]:
                                hL[i] = level
                                hP[i] = p
                            merged = True
                            break
                    if not merged:
                        hL[nh] = level
                        hN[nh] = 1
                        hP[nh] = p
                        nh += 1
                        if nh > max_levels:
                            for i in range(nh - 1):
                                hL[i] = hL[i + 1]
                                hN[i] = hN[i + 1]
                                hP[i] = hP[i + 1]
                            nh -= 1
                else:
                    merged = False
                    for i in range(nl):
                        if abs(lL[i] - level) <= tol:
                            lN[i] += 1
                            if level < lL[i]:
                                lL[i] = level
                                lP[i] = p
                            merged = True
                            break
                    if not merged:
                        lL[nl] = level
                        lN[nl] = 1
                        lP[nl] = p
                        nl += 1
                        if nl > max_levels:
                            for i in range(nl - 1):
                                lL[i] = lL[i + 1]
                                lN[i] = lN[i + 1]
                                lP[i] = lP[i + 1]
                            nl -= 1

        # ---------------- 6. snapshot
        best_d = -1.0
        fsize = 0.0
        for i in range(nf):
            top = fT[i]
            bot = fB[i]
            dist = bot - c if c < bot else (c - top if c > top else 0.0)
            if best_d < 0.0 or dist <= best_d:
                best_d = dist
                fsize = top - bot
        reach = 3.0 * atr
        odist = -1.0
        onear = 0
        for i in range(no):
            top = oT[i]
            bot = oB[i]
            dist = bot - c if c < bot else (c - top if c > top else 0.0)
            if odist < 0.0 or dist < odist:
                odist = dist
            if dist <= reach:
                onear += 1
        ld = -1.0
        for i in range(nh):
            dd = abs(hL[i] - c)
            if ld < 0.0 or dd < ld:
                ld = dd
        for i in range(nl):
            dd = abs(lL[i] - c)
            if ld < 0.0 or dd < ld:
                ld = dd
        s_trend[t] = trend
        s_onear[t] = onear
        s_sdir[t] = sweep_dir
        s_sage[t] = t - sweep_t if sweep_t >= 0 else -1
        s_fsize[t] = fsize
        s_fdist[t] = best_d
        s_odist[t] = odist
        s_ldist[t] = ld

        # ---------------- setup (derive_setup)
        if bull and not bear:
            found = False
            btop = 0.0
            bbot = 0.0
            for i in range(nf):
                if fD[i] == 1 and fB[i] < c and (not found or fT[i] >= btop):
                    found = True
                    btop = fT[i]
                    bbot = fB[i]
            for i in range(no):
                if oD[i] == 1 and oB[i] < c and (not found or oT[i] >= btop):
                    found = True
                    btop = oT[i]
                    bbot = oB[i]
            if found:
                stop = bbot
                if sl_has and l < stop:
                    stop = l
                floor = c - min_stop_atr * atr
                if floor < stop:
                    stop = floor
                set_side[t] = 1
                set_entry[t] = c
                set_stop[t] = stop
                set_target[t] = c + rr * (c - stop)
        elif bear and not bull:
            found = False
            btop = 0.0
            bbot = 0.0
            for i in range(nf):
                if fD[i] == -1 and fT[i] > c and (not found or fB[i] <= bbot):
                    found = True
                    btop = fT[i]
                    bbot = fB[i]
            for i in range(no):
                if oD[i] == -1 and oT[i] > c and (not found or oB[i] <= bbot):
                    found = True
                    btop = oT[i]
                    bbot = oB[i]
            if found:
                stop = btop
                if sh_has and h > stop:
                    stop = h
                ceil = c + min_stop_atr * atr
                if ceil > stop:
                    stop = ceil
                set_side[t] = -1
                set_entry[t] = c
                set_stop[t] = stop
                set_target[t] = c - rr * (stop - c)

        # ---------------- events JSON (sorted keys)
        buf[pos] = _LBRACE
        pos += 1
        first = True
        if brk_kind != 0:
            pos = _wl(buf, pos, K_BOS if brk_kind == 1 else K_CHOCH)
            pos = _wi(buf, pos, brk_dir)
            pos = _wl(buf, pos, K_LEVEL)
            pos, k = _wf(buf, pos, fl, k, brk_lvl)
            pos = _wl(buf, pos, K_PIVOT)
            pos = _wi(buf, pos, brk_piv)
            buf[pos] = _RBRACE
            pos += 1
            first = False
        if fdir != 0:
            if not first:
                buf[pos] = _COMMA
                pos += 1
            pos = _wl(buf, pos, K_FVG)
            pos, k = _wf(buf, pos, fl, k, fb[t])
            pos = _wl(buf, pos, K_DIR)
            pos = _wi(buf, pos, fdir)
            pos = _wl(buf, pos, K_TOP)
            pos, k = _wf(buf, pos, fl, k, ft[t])
            buf[pos] = _RBRACE
            pos += 1
            first = False
        if nmf > 0:
            if not first:
                buf[pos] = _COMMA
                pos += 1
            pos = _wl(buf, pos, K_FVGM)
            for i in range(nmf):
                if i > 0:
                    buf[pos] = _COMMA
                    pos += 1
                pos = _wl(buf, pos, K_BOTTOM0)
                pos, k = _wf(buf, pos, fl, k, mfB[i])
                pos = _wl(buf, pos, K_CREATED)
                pos = _wi(buf, pos, mfC[i])
                pos = _wl(buf, pos, K_DIR)
                pos = _wi(buf, pos, mfD[i])
                pos = _wl(buf, pos, K_TOP)
                pos, k = _wf(buf, pos, fl, k, mfT[i])
                buf[pos] = _RBRACE
                pos += 1
            buf[pos] = _RBRACKET
            pos += 1
            first = False
        if ob_has:
            if not first:
                buf[pos] = _COMMA
                pos += 1
            pos = _wl(buf, pos, K_OB)
            pos, k = _wf(buf, pos, fl, k, ob_bot)
            pos = _wl(buf, pos, K_DIR)
            pos = _wi(buf, pos, brk_dir)
            pos = _wl(buf, pos, K_INDEX)
            pos = _wi(buf, pos, ob_idx)
            pos = _wl(buf, pos, K_STRENGTH)
            pos, k = _wf(buf, pos, fl, k, ob_str)
            pos = _wl(buf, pos, K_TIME)
            pos = _wi(buf, pos, T[ob_idx])
            pos = _wl(buf, pos, K_TOP)
            pos, k = _wf(buf, pos, fl, k, ob_top)
            pos = _wl(buf, pos, K_VSHARE)
            pos, k = _wf(buf, pos, fl, k, ob_shr)
            buf[pos] = _RBRACE
            pos += 1
            first = False
        if nmo > 0:
            if not first:
                buf[pos] = _COMMA
                pos += 1
            pos = _wl(buf, pos, K_OBM)
            for i in range(nmo):
                if i > 0:
                    buf[pos] = _COMMA
                    pos += 1
                pos = _wl(buf, pos, K_BOTTOM0)
                pos, k = _wf(buf, pos, fl, k, moB[i])
                pos = _wl(buf, pos, K_DIR)
                pos = _wi(buf, pos, moD[i])
                pos = _wl(buf, pos, K_INDEX)
                pos = _wi(buf, pos, moI[i])
                pos = _wl(buf, pos, K_TOP)
                pos, k = _wf(buf, pos, fl, k, moT[i])
                buf[pos] = _RBRACE
                pos += 1
            buf[pos] = _RBRACKET
            pos += 1
            first = False
        if sh_has or sl_has:
            if not first:
                buf[pos] = _COMMA
                pos += 1
            pos = _wl(buf, pos, K_SWEEP)
            if sh_has:
                pos = _wl(buf, pos, K_COUNT0)
                pos = _wi(buf, pos, sh_cnt)
                pos = _wl(buf, pos, K_DIR)
                pos = _wi(buf, pos, -1)
                pos = _wl(buf, pos, K_LEVEL)
                pos, k = _wf(buf, pos, fl, k, sh_lvl)
                pos = _wl(buf, pos, K_PIVOT)
                pos = _wi(buf, pos, sh_piv)
                pos = _wl(buf, pos, K_SIDE_HIGH)
            if sl_has:
                if sh_has:
                    buf[pos] = _COMMA
                    pos += 1
                pos = _wl(buf, pos, K_COUNT0)
                pos = _wi(buf, pos, sl_cnt)
                pos = _wl(buf, pos, K_DIR)
                pos = _wi(buf, pos, 1)
                pos = _wl(buf, pos, K_LEVEL)
                pos, k = _wf(buf, pos, fl, k, sl_lvl)
                pos = _wl(buf, pos, K_PIVOT)
                pos = _wi(buf, pos, sl_piv)
                pos = _wl(buf, pos, K_SIDE_LOW)
            buf[pos] = _RBRACKET
            pos += 1
            first = False
        if sw_ev != 0:
            if not first:
                buf[pos] = _COMMA
                pos += 1
            pos = _wl(buf, pos, K_SWH if sw_ev == 1 else K_SWL)
            pos, k = _wf(buf, pos, fl, k, sw_lvl)
            pos = _wl(buf, pos, K_PIVOT)
            pos = _wi(buf, pos, sw_piv)
            pos = _wl(buf, pos, K_SUPERSEDES)
            if sw_sup < 0:
                pos = _wl(buf, pos, K_NULL)
            else:
                pos = _wi(buf, pos, sw_sup)
            pos = _wl(buf, pos, K_TIME)
            pos = _wi(buf, pos, T[sw_piv])
            buf[pos] = _RBRACE
            pos += 1
        buf[pos] = _RBRACE
        buf[pos + 1] = _NL
        pos += 2

    snaps = (s_trend, s_onear, s_sdir, s_sage, s_fsize, s_fdist, s_odist, s_ldist)
    return (atr_out, atr_eff, rsi_out, snaps, set_side, set_entry, set_stop, set_target,
            buf[:pos], fl[:k])


@njit(**_NJ)
def _splice(buf, nums):
    """Replace each NUL of buf by the next comma-separated number of nums (orjson's '[a,b,...]')."""
    out = np.empty(buf.shape[0] + nums.shape[0], dtype=np.uint8)
    j = 1                       # skip '['
    q = 0
    for i in range(buf.shape[0]):
        x = buf[i]
        if x == _NUL:
            y = nums[j]
            while y != _COMMA and y != _RBRACKET:
                out[q] = y
                q += 1
                j += 1
                y = nums[j]
            j += 1
        else:
            out[q] = x
            q += 1
    return out[:q]


def events_json(buf: np.ndarray, fl: np.ndarray, n: int) -> list[str]:
    """Per-bar JSON strings from the kernel's bytes (floats formatted by orjson and spliced in)."""
    if n == 0:
        return []
    if fl.shape[0]:
        nums = np.frombuffer(orjson.dumps(fl, option=orjson.OPT_SERIALIZE_NUMPY), dtype=np.uint8)
        buf = _splice(buf, nums)
    out = buf.tobytes().decode("ascii").split("\n")
    out.pop()
    return out
