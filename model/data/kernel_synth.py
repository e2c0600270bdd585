"""KernelSynth-style series: Gaussian-process samples under random kernel compositions.

Follows Chronos' KernelSynth (Ansari et al., 2024): draw 1 to 5 kernels from a bank (periodic,
linear, RBF, rational-quadratic, white noise, constant), join them at random with `+` and `*`,
and sample the GP on x = t / length, t = 0 .. length - 1. Periods are in points.

Sampling costs O(n log n) instead of a Cholesky's O(n^3), at any length. The composition is
multiplied out into a sum of products; a sum of kernels is a sum of independent processes, so
each product is sampled on its own. In one product:
  * the linear kernels give a polynomial sum_j c_j (x x')^j with c_j >= 0 ((s0^2 + x x')
    multiplied out), realised as sum_j sqrt(c_j) x^j f_j(t) with independent f_j;
  * the periodic kernels give spectral lines sum_k w_k cos(f_k (t - t')) with w_k >= 0 (each
    kernel's Fourier series; a product of cosines is a sum of cosines), realised as
    f(t) = sum_k sqrt(w_k) (g_k(t) cos(f_k t) + h_k(t) sin(f_k t));
  * the remaining stationary kernels give R(t - t'), and g_k, h_k are independent GP(0, R)
    draws by circulant embedding (one FFT each), or constants when there is no such kernel.
Each step reproduces its covariance exactly. The approximations: harmonics and spectral lines
carrying under 1e-4 of the variance are dropped (and at most 64 lines kept), and negative
eigenvalues of the circulant embedding of R are clipped to zero, which moves the covariance of
the smoothest kernels (RBF and rational-quadratic with length scale 1) by up to ~5 %.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from moecast.model.data._validation import require_length

MAX_KERNELS = 5
# Seasonal periods (in points) of hourly, 10/15-minute, daily and weekly data, as in Chronos.
PERIODS: tuple[int, ...] = (4, 6, 7, 10, 12, 14, 24, 30, 48, 52, 60, 96, 168, 288, 336, 365, 672)
FOURIER_POINTS = 64  # samples of one period from which a periodic kernel's harmonics are read
MAX_LINES = 64  # spectral lines kept for a product of periodic kernels
MIN_LINE_WEIGHT = 1e-4  # lines lighter than this share of the variance are dropped


class Kernel:
    """A covariance function; `+` and `*` build compositions."""

    def terms(self) -> tuple[Term, ...]:
        """The kernel as a sum of products: periodic x other stationary x polynomial in x x'."""
        raise NotImplementedError

    def __add__(self, other: Kernel) -> Kernel:
        return Sum(self, other)

    def __mul__(self, other: Kernel) -> Kernel:
        return Product(self, other)


@dataclass(frozen=True)
class Term:
    periodic: tuple[Periodic, ...]
    decaying: tuple[StationaryKernel, ...]
    poly: tuple[float, ...]  # coefficient j multiplies (x x')^j


class StationaryKernel(Kernel):
    """A kernel of the lag alone that is sampled by circulant embedding."""

    def lag_covariance(self, lags: np.ndarray, length: int) -> np.ndarray:
        """Covariance at integer lags (in points) for a series of `length` points."""
        raise NotImplementedError

    def terms(self) -> tuple[Term, ...]:
        return (Term((), (self,), (1.0,)),)


@dataclass(frozen=True)
class Periodic(Kernel):
    """exp(-2 sin^2(pi (t - t') / period) / length_scale^2)."""

    period: float
    length_scale: float = 1.0

    def terms(self) -> tuple[Term, ...]:
        return (Term((self,), (), (1.0,)),)

    def spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """(frequencies in radians per point, weights): the kernel's Fourier series."""
        u = np.arange(FOURIER_POINTS) / FOURIER_POINTS
        profile = np.exp(-2.0 * np.sin(np.pi * u) ** 2 / self.length_scale**2)
        coefficients = np.fft.rfft(profile).real[: FOURIER_POINTS // 2] / FOURIER_POINTS
        weights = np.concatenate([coefficients[:1], 2.0 * coefficients[1:]])
        harmonics = np.arange(weights.size)
        return 2.0 * np.pi * harmonics / self.period, weights


@dataclass(frozen=True)
class RBF(StationaryKernel):
    length_scale: float

    def lag_covariance(self, lags: np.ndarray, length: int) -> np.ndarray:
        return np.exp(-0.5 * (lags / length / self.length_scale) ** 2)


@dataclass(frozen=True)
class RationalQuadratic(StationaryKernel):
    alpha: float
    length_scale: float = 1.0

    def lag_covariance(self, lags: np.ndarray, length: int) -> np.ndarray:
        scaled = (lags / length / self.length_scale) ** 2 / (2.0 * self.alpha)
        return (1.0 + scaled) ** -self.alpha


@dataclass(frozen=True)
class WhiteNoise(StationaryKernel):
    variance: float

    def lag_covariance(self, lags: np.ndarray, length: int) -> np.ndarray:
        return np.where(lags == 0, self.variance, 0.0)


@dataclass(frozen=True)
class Constant(StationaryKernel):
    value: float = 1.0

    def lag_covariance(self, lags: np.ndarray, length: int) -> np.ndarray:
        return np.full(lags.shape, self.value)


@dataclass(frozen=True)
class Linear(Kernel):
    """Dot-product kernel s0^2 + x x'."""

    sigma0: float

    def terms(self) -> tuple[Term, ...]:
        return (Term((), (), (self.sigma0**2, 1.0)),)


@dataclass(frozen=True)
class Sum(Kernel):
    left: Kernel
    right: Kernel

    def terms(self) -> tuple[Term, ...]:
        return self.left.terms() + self.right.terms()


@dataclass(frozen=True)
class Product(Kernel):
    left: Kernel
    right: Kernel

    def terms(self) -> tuple[Term, ...]:
        return tuple(
            Term(
                a.periodic + b.periodic,
                a.decaying + b.decaying,
                tuple(np.convolve(a.poly, b.poly).tolist()),
            )
            for a in self.left.terms()
            for b in self.right.terms()
        )


KERNEL_BANK: tuple[Kernel, ...] = (
    *(Periodic(float(p)) for p in PERIODS),
    *(Linear(s) for s in (0.0, 1.0, 10.0)),
    *(RBF(scale) for scale in (0.1, 1.0, 10.0)),
    *(RationalQuadratic(alpha) for alpha in (0.1, 1.0, 10.0)),
    WhiteNoise(0.1),
    WhiteNoise(1.0),
    Constant(1.0),
)


def draw_kernel(rng: np.random.Generator, max_kernels: int = MAX_KERNELS) -> Kernel:
    """1..max_kernels kernels from the bank (with replacement), joined by random + and *."""
    count = int(rng.integers(1, max_kernels + 1))
    picks = [KERNEL_BANK[i] for i in rng.integers(0, len(KERNEL_BANK), size=count)]
    return functools.reduce(lambda a, b: a + b if rng.random() < 0.5 else a * b, picks)


def sample_gp(kernel: Kernel, rng: np.random.Generator, length: int) -> np.ndarray:
    """One zero-mean sample of GP(0, kernel) on t = 0 .. length - 1, float32."""
    require_length(length)
    x = np.arange(length) / length
    lags = np.arange(length + 1, dtype=np.float64)
    values = np.zeros(length)
    for term in kernel.terms():
        sqrt_spectrum = None  # no decaying factor: R = 1, the carriers are constants
        if term.decaying:
            lag_cov = np.prod([k.lag_covariance(lags, length) for k in term.decaying], axis=0)
            sqrt_spectrum = _circulant_sqrt_spectrum(lag_cov)
        frequencies, weights = _product_spectrum(term.periodic)
        for power, coefficient in enumerate(term.poly):
            if coefficient > 0.0:
                draw = _modulated_draw(rng, sqrt_spectrum, frequencies, weights, length)
                values += np.sqrt(coefficient) * x**power * draw
    return values.astype(np.float32)


def kernel_synth(rng: np.random.Generator, length: int) -> np.ndarray:
    """A GP sample under a freshly drawn kernel composition."""
    return sample_gp(draw_kernel(rng), rng, length)


def _product_spectrum(factors: tuple[Periodic, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Spectral lines of a product of periodic kernels (one line at 0 for none)."""
    frequencies, weights = np.zeros(1), np.ones(1)
    for factor in factors:
        other_frequencies, other_weights = factor.spectrum()
        # cos(a) cos(b) = (cos(a + b) + cos(a - b)) / 2
        frequencies = np.concatenate(
            [
                (frequencies[:, None] + other_frequencies).ravel(),
                np.abs(frequencies[:, None] - other_frequencies).ravel(),
            ]
        )
        weights = np.tile((weights[:, None] * other_weights).ravel() / 2.0, 2)
        frequencies, weights = _strongest_lines(frequencies, weights)
    return frequencies, weights


def _strongest_lines(frequencies: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Equal frequencies merge; lines below MIN_LINE_WEIGHT of the total, and all but the
    # MAX_LINES strongest, carry too little variance to matter.
    unique, inverse = np.unique(np.round(frequencies, 12), return_inverse=True)
    merged = np.bincount(inverse, weights=weights)
    keep = np.argsort(merged)[::-1][:MAX_LINES]
    keep = keep[merged[keep] >= MIN_LINE_WEIGHT * merged.sum()]
    return unique[keep], merged[keep]


def _modulated_draw(
    rng: np.random.Generator,
    sqrt_spectrum: np.ndarray | None,
    frequencies: np.ndarray,
    weights: np.ndarray,
    length: int,
) -> np.ndarray:
    """A draw with covariance R(t - t') sum_k weights_k cos(frequencies_k (t - t'))."""
    lines = frequencies.size
    if sqrt_spectrum is None:
        carriers = rng.standard_normal((2 * lines, 1))
    else:
        carriers = _draw_stationary(rng, sqrt_spectrum, length, count=2 * lines)
    phase = frequencies[:, None] * np.arange(length)
    modulated = carriers[:lines] * np.cos(phase) + carriers[lines:] * np.sin(phase)
    return np.sqrt(weights) @ modulated


def _circulant_sqrt_spectrum(lag_cov: np.ndarray) -> np.ndarray:
    # Mirror lags 0..n into a circulant of size 2n whose top-left n x n block is the Toeplitz
    # covariance; its eigenvalues are the FFT of the first row.
    first_row = np.concatenate([lag_cov, lag_cov[-2:0:-1]])
    eigenvalues = np.fft.fft(first_row).real
    return np.sqrt(np.clip(eigenvalues, 0.0, None) / first_row.size)


def _draw_stationary(
    rng: np.random.Generator, sqrt_spectrum: np.ndarray, length: int, count: int
) -> np.ndarray:
    """`count` independent draws (rows) with the embedded stationary covariance."""
    # Real part of F diag(sqrt(lambda / m)) (e1 + i e2) has exactly the circulant covariance.
    shape = (count, sqrt_spectrum.size)
    noise = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return np.fft.fft(sqrt_spectrum * noise, axis=1).real[:, :length]
