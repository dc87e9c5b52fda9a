"""Online anomaly detection: batch numba kernels (`kernels`), their ensemble (`ensemble`), the
NAB-compatible scorer and baselines (`nab`) and the single-series replay (`series_cli`)."""
