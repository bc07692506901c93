"""HTTP: health, Prometheus metrics, admin API."""
