"""Prometheus metrics of the API process (served at /metrics)."""

from prometheus_client import Counter, Histogram

REQUESTS = Counter("rapid_adapt_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("rapid_adapt_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
ADAPTATIONS = Counter("rapid_adapt_adaptations_created_total", "adaptations accepted", ["model"])
CACHE = Counter("rapid_adapt_weights_cache_total", "adapted-weights lookups by where they were found",
                ["result"])  # lru_hit, redis_hit, miss_readapt
PREDICT_BATCH = Histogram("rapid_adapt_predict_batch_images", "images per batched forward pass",
                          buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
