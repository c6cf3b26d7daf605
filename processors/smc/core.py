"""Detector composition: one bar -> events, state snapshot and setup. Shared by both forms.

The incremental engine calls `step` with fvg/swing candidates computed from the bar buffer; the
batch form passes candidates it computed vectorised over the whole series (tests prove they agree).
Order inside a bar (each detector sees the state left by the previous bar unless noted):
 1. mitigation of open FVGs and OBs (created on earlier bars)
 2. BOS/CHoCH against the current swing levels, and the OB it creates
 3. sweeps of tracked liquidity levels
 4. OB trackers absorb this bar; a new FVG is opened
 5. swing confirmation for pivot t-N (new or superseding): new structure level, OB tracker seeded
    with bars p+1..t, liquidity level added
 6. snapshot for the features, and the setup
"""
from __future__ import annotations

from collections import deque

from .config import SmcConfig
from .fvg import FvgBook, detect_fvg
from .liquidity import LevelBook
from .order_blocks import ObBook
from .setup import FLAT, derive_setup
from .structure import Structure
from .swings import SwingRun, swing_candidate

# snapshot fields (per bar, after the update); distances are -1.0 when there is nothing to measure
SNAPSHOT_FIELDS = ("trend", "n_near_obs", "sweep_dir", "sweep_age", "fvg_size", "fvg_dist", "ob_dist", "level_dist")


class DetectorCore:
    __slots__ = ("cfg", "t", "buf", "fvgs", "obs", "levels", "structure", "run", "sweep_dir", "sweep_t")

    def __init__(self, cfg: SmcConfig):
        self.cfg = cfg
        self.t = -1
        self.buf: deque[tuple] = deque(maxlen=cfg.buffer_len())    # (idx, time, o, h, l, c, v)
        self.fvgs = FvgBook(cfg.max_open_fvgs)
        self.obs = ObBook(cfg.max_open_obs)
        self.levels = LevelBook(cfg.max_levels)
        self.structure = Structure()
        self.run = SwingRun()
        self.sweep_dir = 0
        self.sweep_t = -1

    def step(self, time: int, o: float, h: float, l: float, c: float, v: float, atr: float,
             fvg=None, swing_side=None):
        cfg = self.cfg
        t = self.t + 1
        self.t = t
        b = (t, time, o, h, l, c, v)
        buf = self.buf
        buf.append(b)
        ev: dict | None = None

        # 1. mitigation
        if self.fvgs.open:
            m = self.fvgs.mitigate(h, l)
            if m:
                ev = {"fvg_mitigated": m}
        if self.obs.open:
            m = self.obs.mitigate(h, l)
            if m:
                ev = ev or {}
                ev["ob_mitigated"] = m

        # 2. structure break + order block
        st = self.structure
        brk = st.check_break(c)
        bull = bear = 0
        if brk is not None:
            kind, d, swing, trk = brk
            ev = ev or {}
            ev[kind] = {"dir": d, "level": swing[2], "pivot": swing[0]}
            if d == 1:
                bull = 1
            else:
                bear = 1
            cand = trk.candle(cfg.ob_require_down_candle) if trk is not None else None
            if cand is not None:
                top, bot = cand[3], cand[4]
                a = atr if atr > 1e-12 else 1e-12
                strength = abs(cand[5] - cand[2]) / a
                share = cand[6] / trk.vol_sum if trk.vol_sum > 0.0 else 0.0
                self.obs.add(d, top, bot, cand[0])
                ev["ob"] = {"dir": d, "top": top, "bottom": bot, "index": cand[0], "time": cand[1],
                            "strength": strength, "volume_share": share}

        # 3. sweeps
        sw_bull = sw_bear = False
        if self.levels.highs or self.levels.lows:
            s = self.levels.sweep(h, l, c)
            if s:
                ev = ev or {}
                ev["sweep"] = s
                net = 0
                for x in s:
                    net += x["dir"]
                    if x["dir"] == 1:
                        sw_bull = True
                    else:
                        sw_bear = True
                self.sweep_dir = (net > 0) - (net < 0)
                self.sweep_t = t
                bull |= sw_bull
                bear |= sw_bear

        # 4. trackers, new FVG
        st.push(b)
        if fvg is None:
            if t >= 2:
                b1 = buf[-2]
                b2 = buf[-3]
                fvg = detect_fvg(b1[2], b1[5], b2[3], b2[4], h, l)
            else:
                fvg = (0, 0.0, 0.0)
        if fvg[0] != 0:
            self.fvgs.add(fvg[0], fvg[1], fvg[2], t)
            ev = ev or {}
            ev["fvg"] = {"dir": fvg[0], "top": fvg[1], "bottom": fvg[2]}

        # 5. swings
        n = cfg.swing_length
        if swing_side is None:
            swing_side = 0
            if t >= 3 * n - 1:   # pivot >= 2N-1: the package's rolling window needs 2N shifted values
                swing_side = swing_candidate([x[3] for x in buf][-2 * n:], [x[4] for x in buf][-2 * n:], n)
        if swing_side != 0:
            pb = buf[-1 - n]
            level = pb[3] if swing_side == 1 else pb[4]
            old = self.run.offer(swing_side, level, pb[0])
            if old is not None:
                ev = ev or {}
                ev["swing_high" if swing_side == 1 else "swing_low"] = {
                    "pivot": pb[0], "time": pb[1], "level": level, "supersedes": None if old < 0 else old}
                st.set_swing(swing_side, pb[0], pb[1], level, list(buf)[-n:])
                self.levels.add(swing_side, level, pb[0], cfg.cluster_atr * atr)

        # 6. snapshot, setup
        fsize, fdist = self.fvgs.nearest(c) if self.fvgs.open else (0.0, -1.0)
        odist, onear = self.obs.nearest_distance(c, 3.0 * atr) if self.obs.open else (-1.0, 0)
        snap = (st.trend, onear, self.sweep_dir, t - self.sweep_t if self.sweep_t >= 0 else -1,
                fsize, fdist, odist, self.levels.nearest_distance(c))
        setup = FLAT
        if bull or bear:
            setup = derive_setup(bull, bear, c, h, l, atr, sw_bull, sw_bear, self.fvgs.open, self.obs.open,
                                 cfg.rr, cfg.min_stop_atr)
        return ev, snap, setup

    # -- serialisation (plain lists; tuples come back as lists, which the code only indexes)
    def to_state(self) -> list:
        return [self.t, list(self.buf), self.fvgs.open, self.obs.open, self.levels.highs, self.levels.lows,
                self.structure.to_state(), self.run.to_state(), self.sweep_dir, self.sweep_t]

    @classmethod
    def from_state(cls, cfg: SmcConfig, s: list) -> "DetectorCore":
        o = cls(cfg)
        o.t = s[0]
        o.buf.extend(s[1])
        o.fvgs.open, o.obs.open, o.levels.highs, o.levels.lows = s[2], s[3], s[4], s[5]
        o.structure = Structure.from_state(s[6])
        o.run = SwingRun.from_state(s[7])
        o.sweep_dir, o.sweep_t = s[8], s[9]
        return o
