"""Variable rate: one task file codes at any rate between its trained anchors (EVC, DCVC).

A variable-rate head (``model.variable_rate``) learns, besides its usual weights, a
per-channel quantization step for each of A anchor rates, on both sides of the channel::

    y -> y / q_enc(r) -> dual spatial entropy model -> y_hat_s -> y_hat_s * q_dec(r) -> decoder

``q_enc``, ``q_dec``: parameters of shape (A, M, 1, 1). Anchor k trains at lambda
``model.rate_lambdas[k]`` (ascending) and sits at rate ``r = k / (A - 1)``: r = 0 is the lowest
trained rate, r = 1 the highest. Between two anchors the steps are interpolated in the log
domain, ``q(r) = q_k ** (1 - t) * q_{k+1} ** t``: a geometric path, as quantization steps
(and lambdas) are spaced geometrically.

Rates live on a grid of ``1 / RATE_STEPS``: the stream stores the grid index (u16), and
``forward``, ``predict`` and the coder all snap a rate to the same grid, so a stream decodes
to exactly the eval forward at its rate. ``RATE_STEPS`` = 55440 is a multiple of every
integer up to 12 (and of 16), so each anchor of a ladder of up to 13 anchors is a grid point
and is hit exactly: there the step is the anchor's own parameter, not an interpolation.
"""

from __future__ import annotations

import math

import torch

from icm_core.errors import ConfigError

RATE_STEPS = 55440  # lcm(1..12) * 2: the grid of rates a stream can carry (u16)
MAX_ANCHORS = 13  # every k / (A - 1) is a grid point for A - 1 <= 12
Q_MIN = 1e-3  # quantization steps are kept above this (a learned step may not reach 0)


def rate_code(rate, lambdas=None) -> int:
    """``rate`` in [0, 1] -> its grid index in 0 .. RATE_STEPS; ``ConfigError`` outside.

    ``lambdas`` (the anchors', optional) only make the message say what 0 and 1 mean.
    """
    ok = (not isinstance(rate, bool) and isinstance(rate, (int, float))
          and math.isfinite(rate) and 0 <= rate <= 1)
    if not ok:
        what = "" if not lambdas else (f" (0: the lowest trained rate, lambda {lambdas[0]:g}; "
                                       f"1: the highest, lambda {lambdas[-1]:g})")
        raise ConfigError(f"rate={rate!r} is outside the trained range [0, 1]{what}; give a "
                          "number from 0 to 1")
    return round(float(rate) * RATE_STEPS)


def snap_rate(rate, lambdas=None) -> float:
    """``rate`` on the grid every coder call uses (what ``rate_of_code`` gives back)."""
    return rate_of_code(rate_code(rate, lambdas))


def rate_of_code(code: int) -> float:
    return code / RATE_STEPS


def anchor_position(code: int, anchors: int) -> tuple[int, float]:
    """Grid index -> (k, t): between anchor k and k + 1, at fraction t in [0, 1).

    Integer arithmetic: t is exactly 0 on an anchor's own grid point.
    """
    k, rem = divmod(code * (anchors - 1), RATE_STEPS)
    if k >= anchors - 1:
        return anchors - 1, 0.0
    return k, rem / RATE_STEPS


def anchor_rate(k: int, anchors: int) -> float:
    """The rate of anchor k: k / (A - 1), on the grid."""
    return rate_of_code(k * RATE_STEPS // (anchors - 1))


def anchor_rates(anchors: int) -> list[float]:
    return [anchor_rate(k, anchors) for k in range(anchors)]


def interpolate(q: torch.Tensor, code: int) -> torch.Tensor:
    """Per-anchor steps (A, M, 1, 1) -> the steps at grid index ``code``, (1, M, 1, 1).

    On an anchor: that anchor's steps themselves (bit-exact, and only they get gradients);
    between anchors: the log-domain interpolation of its two neighbours.
    """
    k, t = anchor_position(code, q.shape[0])
    lo = q[k].clamp_min(Q_MIN)
    if t == 0.0:
        return lo.unsqueeze(0)
    hi = q[k + 1].clamp_min(Q_MIN)
    return torch.exp((1 - t) * torch.log(lo) + t * torch.log(hi)).unsqueeze(0)


def lambda_at(rate: float, lambdas) -> float:
    """The lambda a rate stands for: the anchors' lambdas interpolated geometrically."""
    k, t = anchor_position(rate_code(rate, lambdas), len(lambdas))
    if t == 0.0:
        return float(lambdas[k])
    return float(math.exp((1 - t) * math.log(lambdas[k]) + t * math.log(lambdas[k + 1])))


def rate_at(lmbda: float, lambdas) -> float:
    """The rate that stands for ``lmbda`` (the inverse of ``lambda_at``, on the grid);
    ``ConfigError`` outside the anchors' range."""
    lams = [float(v) for v in lambdas]
    ok = (not isinstance(lmbda, bool) and isinstance(lmbda, (int, float))
          and math.isfinite(lmbda) and lams[0] <= lmbda <= lams[-1])
    if not ok:
        raise ConfigError(f"lambda {lmbda!r} is outside the anchors' range [{lams[0]:g}, "
                          f"{lams[-1]:g}]; give a lambda between the lowest and highest anchor")
    k = max(i for i in range(len(lams)) if lams[i] <= lmbda)
    if k == len(lams) - 1:
        return 1.0
    t = (math.log(lmbda) - math.log(lams[k])) / (math.log(lams[k + 1]) - math.log(lams[k]))
    return snap_rate((k + t) / (len(lams) - 1))


def initial_steps(lambdas) -> torch.Tensor:
    """(A,) starting quantization steps: ``(lambda_k / geometric mean) ** -1/2``.

    At high rate a step q costs distortion ~ q**2 and rate ~ -log q, so the optimum of
    R + lambda * D has q ~ lambda**-1/2; centred on the ladder's geometric mean, the middle
    anchors start near the per-lambda model's unit step. Training moves them per channel.
    """
    lam = torch.tensor([float(v) for v in lambdas], dtype=torch.float64)
    return (lam / lam.log().mean().exp()).pow(-0.5).float()


def sweep(points: int) -> list[float]:
    """``points`` evenly spaced rates from 0 to 1 (on the grid), for rate-accuracy curves."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ConfigError(f"rate sweep of {points!r} points: give an integer >= 2")
    return [snap_rate(i / (points - 1)) for i in range(points)]


__all__ = ["RATE_STEPS", "MAX_ANCHORS", "rate_code", "snap_rate", "rate_of_code",
           "anchor_position", "anchor_rate", "anchor_rates", "interpolate", "lambda_at", "rate_at",
           "initial_steps", "sweep"]
