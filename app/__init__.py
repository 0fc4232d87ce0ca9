"""Rapid Adapt's service. `app.core` is what the API and the workers share (settings,
the Redis store, the job queue, adaptation, logs); `app.api` is the HTTP service
(`app.main:app`), which the workers never import."""
