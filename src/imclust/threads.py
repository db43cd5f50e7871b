"""One thread policy for every library that runs work in parallel: torch, faiss (OpenMP) and BLAS.

The default is ``IMCLUST_THREADS`` when that is set, else ``OMP_NUM_THREADS`` when that is set, else the number
of CPU cores this process may use (its affinity mask); ``imclust ... --threads N`` and :func:`set_threads`
choose another. The count goes to
torch's intra-op pool, to faiss and to the BLAS library (through threadpoolctl) when they are loaded, and
into ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` so that libraries loaded later and
child processes (DataLoader workers) start with it.

Small dense algebra (a Gaussian mixture's 10×10 covariances, the PCA of a few thousand HOG vectors) runs on
one BLAS thread (:func:`single_thread_blas`, :func:`blas_for`): threads cannot speed up such small products,
and on a busy machine their spinning makes them many times slower (a PCA of 1,797 × 468 features took 7 s
on two BLAS threads and 0.3 s on one while the machine's load average was 15).
"""

from __future__ import annotations

import contextlib
import os
import sys

from .errors import UserError

ENV = "IMCLUST_THREADS"
_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_current: int | None = None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _check(n, where: str) -> int:
    try:
        value = int(n)
    except (TypeError, ValueError):
        raise UserError(f"{where} {n!r}: give a whole number of threads, at least 1") from None
    if value < 1 or str(value) != str(n).strip():
        raise UserError(f"{where} {n!r}: give a whole number of threads, at least 1")
    return value


def default_threads() -> int:
    """``IMCLUST_THREADS`` when set, else ``OMP_NUM_THREADS`` when set, else the cores this process may use."""
    for var in (ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(var)
        if value not in (None, ""):
            return _check(value, var)
    return usable_cores()


def set_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: :func:`default_threads`) in torch, faiss and BLAS; returns the count."""
    global _current
    n = default_threads() if n is None else _check(n, "--threads")
    _current = n
    for var in _ENV_VARS:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)
    if "numpy" in sys.modules:  # BLAS is loaded with numpy; before that the environment variables above suffice
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    return n


def get_threads() -> int:
    """The count chosen by :func:`set_threads`, or the default when it was never called."""
    return _current if _current is not None else default_threads()


def import_faiss():
    """faiss, running on the policy's thread count once :func:`set_threads` has chosen one (before that it
    keeps OpenMP's, which torch may share: setting it here would change torch's thread count)."""
    import faiss

    if _current is not None:
        faiss.omp_set_num_threads(_current)
    return faiss


@contextlib.contextmanager
def single_thread_blas():
    """Run the enclosed small dense algebra on one BLAS thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


#: below this many floating-point operations a BLAS call runs on one thread
SMALL_BLAS_FLOPS = 2e9


def blas_for(flops: float):
    """A context for dense algebra of about ``flops`` operations: one BLAS thread when it is small."""
    return single_thread_blas() if flops < SMALL_BLAS_FLOPS else contextlib.nullcontext()
