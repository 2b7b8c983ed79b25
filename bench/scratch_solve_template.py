"""Scratch (issue 9, not product code; now audit/solve_template.py): a solve-template statistic on digits.

    PYTHONPATH=. python bench/scratch_solve_template.py --first-key 0 --keys 5

The equation-solving thief (Tramèr et al. 2016) solves the served log-probability ratios on its logged queries
by linear least squares. The probability mark moves mass into one keyed class c* only and takes it from the
others in proportion, so the ratios between the other classes are unchanged: the copy differs from the copy the
same solve would give on the owner's *unmarked* answers only in class c*'s logit, by the least-squares fit of
the mark's change of the c* equations over the logged queries. The auditor has the logged queries and the
owner's unmarked answers, so it can compute, for every key (the true one and the wrong ones), that change
(the *template*), and correlate it with the suspect's c*-logit departure from the unmarked solve on the probes.
The statistic is computed the same way for every key, so the rank p-value among wrong keys stays exact.

Per design key (secrets of bench/api_watermark_keys.py): the digits world, the equation-solving thief through
the gateway's marking, the current audit's verdict, and the template statistic's rank p among wrong keys
(same distribution as the audit's: v uniform on the sphere, φ uniform, c* shared). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_watermark import K, MarkedOracle, world  # noqa: E402

from audit.api_watermark import API_WATERMARK_DEFAULTS, run_api_watermark  # noqa: E402
from audit.solve_template import solve_softmax_linear as clean_solve  # noqa: E402  (the thief's solve)
from audit.suspects.base import CallableSuspect  # noqa: E402
from services.core.settings import Settings  # noqa: E402
from services.demo.redteam import EquationSolving  # noqa: E402
from services.gateway.answer_mark import AnswerMarker  # noqa: E402
from services.gateway.metrics import GatewayMetrics  # noqa: E402

FLOOR = 1e-30


def templates(mark: Any, x_log: np.ndarray, p_log: np.ndarray, theta0: np.ndarray, z_log: np.ndarray,
              z_probe: np.ndarray, v: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """[n_probe, keys] the change of class c*'s logit a least-squares solve of the marked answers would make."""
    c = mark.target_class
    n, k = p_log.shape
    m = v.shape[1]
    angle = mark.frequency * (x_log @ v) + phases  # [n, m]
    ref = p_log.argmax(axis=1)
    ell0 = z_log @ theta0.T  # [n, k] the clean solve's logits
    out = np.zeros((len(z_probe), m))
    for start in range(0, m, 128):
        sl = slice(start, min(m, start + 128))
        mm = sl.stop - sl.start
        s = np.cos(angle[:, sl]).T.reshape(-1)  # key-major
        p_rep = np.tile(p_log, (mm, 1))
        served, _ = mark._move_mass(p_rep, s, c, np.dtype(np.float64))
        served = served.reshape(mm, n, k)
        ref_rep = np.tile(ref, mm).reshape(mm, n)
        pc = served[:, :, c]
        pref = np.take_along_axis(served, ref_rep[:, :, None], axis=2)[:, :, 0]
        ok = (pc >= FLOOR) & (ref_rep != c)  # [mm, n]
        # target of c*'s logit: served ratio to the row's reference class plus the clean solve's reference logit
        with np.errstate(divide="ignore"):
            target = np.log(np.maximum(pc, 1e-300)) - np.log(np.maximum(pref, 1e-300)) + ell0[np.arange(n), ref][None]
        resid = np.where(ok, target - ell0[:, c][None], 0.0)
        w = ok.astype(np.float64)
        # rows whose reference class is c*: one equation per other class j, ℓ_c* = ℓ_j⁰ + log p'_c* − log p'_j
        is_ref = ref_rep == c  # [mm, n]
        for j in range(k):
            if j == c:
                continue
            pj = served[:, :, j]
            okj = is_ref & (pj >= FLOOR)
            with np.errstate(divide="ignore"):
                tj = ell0[:, j][None] + np.log(np.maximum(pc, 1e-300)) - np.log(np.maximum(pj, 1e-300))
            resid = resid + np.where(okj, tj - ell0[:, c][None], 0.0)
            w = w + okj
        resid = np.divide(resid, w, out=np.zeros_like(resid), where=w > 0)
        gram = np.einsum("mn,ni,nj->mij", w, z_log, z_log) + 1e-6 * np.eye(z_log.shape[1])[None]
        rhs = np.einsum("mn,ni->mi", resid, z_log)
        beta = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]  # [mm, d+1]
        out[:, sl] = z_probe @ beta.T
    return out


def rank_p(values: np.ndarray) -> float:
    return float((1 + np.sum(values[1:] >= values[0])) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--first-key", type=int, default=0)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--null-keys", type=int, default=1999)
    parser.add_argument("--probes", type=int, default=250)
    args = parser.parse_args()
    w = world("digits", 0)
    x, parts, victim = w["x"], w["parts"], w["victim"]
    x_test = x[parts["test"]]
    owner = CallableSuspect(victim.predict, victim.predict_proba)
    out = []
    for key in range(args.first_key, args.first_key + args.keys):
        t0 = time.perf_counter()
        secret = "bench-answer-watermark-secret-0001" if key == 0 else f"bench-answer-watermark-secret-k{key:03d}"
        settings = Settings(env="test", answer_watermark_secret=secret)
        marker = AnswerMarker(settings, GatewayMetrics(CollectorRegistry()))
        mark = settings.answer_watermark(K, x.shape[1])
        oracle = MarkedOracle(victim, marker, False)
        copy = EquationSolving(domain=w["domain"], budget=1000, seed=5).run(oracle).copy
        logged = oracle.logged("eq")
        agreement = float(np.mean(copy.predict(x_test) == victim.predict(x_test)))
        ev = run_api_watermark(
            CallableSuspect(copy.predict, copy.predict_proba),
            mark,
            {"clients": ["eq"], "alpha": 1e-3, "max_queries": 500, "batch_size": 10,
             "n_null_keys": int(API_WATERMARK_DEFAULTS["n_null_keys"])},
            logged=logged,
            owner=owner,
        )
        x_log = np.asarray(logged.inputs, dtype=np.float64)
        p_log = victim.predict_proba(x_log)
        z_log = np.hstack([x_log, np.ones((len(x_log), 1))])
        theta0 = clean_solve(z_log, p_log)
        x_probe = x_log[: args.probes]
        z_probe = z_log[: args.probes]
        q = copy.predict_proba(x_probe)
        # the suspect's c* logit departure: its c* log-ratio to its top class plus the clean solve's top logit
        c = mark.target_class
        top = q.argmax(axis=1)
        top = np.where(top == c, np.argsort(-q, axis=1)[:, 1], top)
        ell0p = z_probe @ theta0.T
        r = (np.log(np.maximum(q[:, c], 1e-300)) - np.log(np.maximum(q[np.arange(len(q)), top], 1e-300))
             + ell0p[np.arange(len(q)), top] - ell0p[:, c])
        r = r - r.mean()
        rng = np.random.default_rng(1)
        v = rng.standard_normal((x.shape[1], args.null_keys))
        v /= np.linalg.norm(v, axis=0)
        vs = np.concatenate([mark.projection[:, None], v], axis=1)
        ph = np.concatenate([[mark.phase], rng.uniform(0, 2 * np.pi, args.null_keys)])
        tmpl = templates(mark, x_log, p_log, theta0, z_log, z_probe, vs, ph)
        # the part every key's template shares (lifting c* where it is small) says nothing about the key: the mean
        # over all keys (a symmetric function of the key set, so exchangeability holds) is removed
        tmpl = tmpl - tmpl.mean(axis=0)
        common = tmpl.mean(axis=1)
        common /= max(np.linalg.norm(common), 1e-300)
        tmpl = tmpl - common[:, None] * (common @ tmpl)[None, :]
        r = r - common * (common @ r)
        t = (r @ tmpl) / np.maximum(np.linalg.norm(tmpl, axis=0), 1e-300)
        # also the cosine of the angle (scale-free) for a look
        corr = t / max(np.linalg.norm(r), 1e-300)
        row = {"key": key, "agreement": round(agreement, 3), "audit_p": ev["p_value"], "audit": ev["verdict"],
               "template_p": rank_p(t), "template_corr_true": round(float(corr[0]), 3),
               "template_corr_wrong_max": round(float(corr[1:].max()), 3), "s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
    print(json.dumps({"rows": out}))


if __name__ == "__main__":
    main()
