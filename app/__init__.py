"""Rapid Adapt's HTTP service: thin FastAPI routes over the Redis store, the job
queue and the in-process predictor."""
