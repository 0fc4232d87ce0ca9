"""What the API and the Celery workers share: settings, the Redis store and its
codecs, the job queue's configuration, running an adaptation, structured logs."""
